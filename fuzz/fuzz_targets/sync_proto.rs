//! The sync protocol decoder: a 16-byte header, then its payload, every
//! frame kind (error frames included). A frame that decodes must encode to
//! exactly the bytes it came from.
#![no_main]

use bytes::BytesMut;
use ha_agent::sync::proto::{HEADER_LEN, decode_header, decode_payload, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((head, payload)) = data.split_first_chunk::<HEADER_LEN>() else {
        return;
    };
    let Ok(h) = decode_header(head) else {
        return;
    };
    // The payload is decoded whatever length the header claims: the
    // reader reads exactly that many bytes, the decoder must not trust it.
    let Ok(frame) = decode_payload(&h, payload) else {
        return;
    };
    assert_eq!(frame.kind(), h.kind);
    let mut out = BytesMut::new();
    encode(&frame, h.seq, &mut out);
    assert_eq!(&out[HEADER_LEN..], payload, "{frame:?}");
    if h.len as usize == payload.len() {
        assert_eq!(&out[..HEADER_LEN], &head[..], "{frame:?}");
    }
});
