//! The configuration file decoder and validator. A file that validates
//! must keep its meaning when config sync writes the cluster keys it
//! already has back into it, and writing them twice changes nothing.
#![no_main]

use ha_agent::config::{parse, persist::with_synced_keys};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cfg) = parse(text, None) else {
        return;
    };
    let view = cfg.synced_view();
    let written = with_synced_keys(text, &view).expect("a valid configuration is TOML");
    let back = parse(&written, None)
        .unwrap_or_else(|e| panic!("rewritten configuration no longer valid: {e}\n{written}"));
    assert_eq!(back, cfg, "rewritten:\n{written}");
    let twice = with_synced_keys(&written, &view).expect("still TOML");
    assert_eq!(twice, written);
});
