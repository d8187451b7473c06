//! The heartbeat frame decoder: raw bytes as they come off a heartbeat
//! link, then the same bytes made authentic (magic, version, cluster,
//! token and tag fixed) so that the checks after the tag run too. Whatever
//! decodes must encode back to exactly the bytes it came from.
#![no_main]

use ha_agent::heartbeat::decode;
use ha_common::frame::{HB_AUTH_LEN, offsets};
use ha_common::{HB_FRAME_LEN, HB_MAGIC, HB_PROTOCOL_VERSION};
use ha_fuzz::{CLUSTER, hb_key};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = hb_key();
    if let Ok(hb) = decode(data, CLUSTER, key) {
        assert_eq!(&hb.encode(key)[..], data, "{hb:?}");
    }
    let mut b = [0u8; HB_FRAME_LEN];
    let n = data.len().min(HB_FRAME_LEN);
    b[..n].copy_from_slice(&data[..n]);
    b[offsets::MAGIC..offsets::MAGIC + 4].copy_from_slice(&HB_MAGIC.to_be_bytes());
    b[offsets::VERSION] = HB_PROTOCOL_VERSION;
    b[offsets::CLUSTER_ID..offsets::CLUSTER_ID + 4].copy_from_slice(&CLUSTER.to_be_bytes());
    // Usually the right token, sometimes the fuzzer's: both paths run.
    if data.last().is_none_or(|l| l & 0x0f != 0) {
        let epoch = u64::from_be_bytes(b[offsets::EPOCH..offsets::EPOCH + 8].try_into().unwrap());
        let seq = u64::from_be_bytes(b[offsets::SEQ..offsets::SEQ + 8].try_into().unwrap());
        b[offsets::TOKEN..offsets::TOKEN + 8].copy_from_slice(&key.token(epoch, seq));
    }
    let tag = key.sign(&b[..HB_AUTH_LEN]);
    b[HB_AUTH_LEN..].copy_from_slice(&tag);
    if let Ok(hb) = decode(&b, CLUSTER, key) {
        assert_eq!(hb.encode(key), b, "{hb:?}");
    }
});
