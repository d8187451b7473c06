//! The ha data plane: heartbeat timestamping (XDP), the VIP gate (XDP) and
//! the egress fence (tc). Built for `bpfel-unknown-none` by
//! `ha-agent/build.rs`; the agent embeds the object.
#![no_std]
#![no_main]

mod fence;
mod gate;
mod heartbeat;
mod maps;
mod pkt;
mod refs;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
