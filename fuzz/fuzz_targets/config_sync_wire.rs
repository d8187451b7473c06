//! The config-sync message parser (the body after length and tag). A
//! message that parses must come back the same through the encoder.
#![no_main]

use ha_agent::config_sync::wire::{from_body, to_body};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = from_body(data) else {
        return;
    };
    let body = to_body(&msg).expect("a parsed message serialises");
    let again = from_body(&body).unwrap_or_else(|e| panic!("{msg:?} encoded as unparsable: {e}"));
    assert_eq!(again, msg);
    assert_eq!(to_body(&again).expect("serialises"), body);
});
