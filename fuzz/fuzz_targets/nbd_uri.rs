//! Fuzz target: the NBD URI parser (`nbd://`, `nbds://`, `nbd+unix://`, `nbds+unix://`) of
//! `--nbd-source KEY=URI` and of the hub's answers. Any input gives a URI or an error, never
//! a panic; a parsed URI prints to a string that parses back to the same URI.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sendense_transfer::nbd::NbdUri;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(uri) = NbdUri::parse(text) {
        let again = NbdUri::parse(&uri.to_string()).expect("a printed URI parses");
        assert_eq!(again, uri);
    }
});
