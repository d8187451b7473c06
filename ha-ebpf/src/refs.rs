//! Benchmark baselines: empty programs and programs that read the clock
//! once (`cargo xtask bench dataplane` subtracts them). The agent never
//! loads them.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_ktime_get_ns,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

#[xdp]
pub fn ref_xdp_empty(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[xdp]
pub fn ref_xdp_clock(_ctx: XdpContext) -> u32 {
    // SAFETY: helper with no preconditions.
    let t = unsafe { bpf_ktime_get_ns() };
    // Keep the read: the verdict depends on it (never true in practice).
    if t == 1 {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

#[classifier]
pub fn ref_tc_empty(_ctx: TcContext) -> i32 {
    crate::fence::TC_ACT_OK
}

#[classifier]
pub fn ref_tc_clock(_ctx: TcContext) -> i32 {
    // SAFETY: helper with no preconditions.
    let t = unsafe { bpf_ktime_get_ns() };
    if t == 1 {
        crate::fence::TC_ACT_SHOT
    } else {
        crate::fence::TC_ACT_OK
    }
}
