//! Fuzz target: every REST request body and every validated id parser of `sendense-types`.
//!
//! The input is tried as the JSON body of each request type and as the text of each id, name,
//! state and timestamp the hub parses from a path or query. Anything may be refused; nothing may
//! panic, and whatever is accepted must survive a round trip (serialize or display, then parse
//! again) unchanged: the hub and the client exchange exactly these forms.
#![no_main]

use std::fmt::Display;
use std::str::FromStr;

use libfuzzer_sys::fuzz_target;
use sendense_types::api::SessionRequest;
use sendense_types::{
    BackupId, BackupQuery, BackupStatus, BackupType, ChangeId, CompleteBackupRequest,
    CredentialName, CredentialRequest, DiskKey, DiskSpec, ExportName, FailBackupRequest,
    RegisterVmRequest, StartBackupRequest, Timestamp, VmName,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

fuzz_target!(|data: &[u8]| {
    json_round_trip::<RegisterVmRequest>(data);
    json_round_trip::<StartBackupRequest>(data);
    json_round_trip::<CompleteBackupRequest>(data);
    json_round_trip::<FailBackupRequest>(data);
    json_round_trip::<CredentialRequest>(data);
    json_round_trip::<SessionRequest>(data);
    json_round_trip::<BackupQuery>(data);
    json_round_trip::<DiskSpec>(data);

    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    text_round_trip::<VmName>(text);
    text_round_trip::<CredentialName>(text);
    text_round_trip::<BackupId>(text);
    text_round_trip::<ChangeId>(text);
    text_round_trip::<ExportName>(text);
    text_round_trip::<DiskKey>(text);
    text_round_trip::<BackupType>(text);
    text_round_trip::<BackupStatus>(text);
    text_round_trip::<Timestamp>(text);
    if let Ok(t) = Timestamp::parse_compact(text) {
        assert!(Timestamp::parse_compact(&t.compact()).is_ok_and(|back| back == t));
    }
    if let Some(secs) = data.first_chunk::<8>().map(|b| i64::from_le_bytes(*b))
        && let Ok(t) = Timestamp::from_unix_seconds(secs)
    {
        assert!(t.to_string().parse::<Timestamp>().is_ok_and(|back| back == t));
    }
});

/// A body the hub accepts serializes to one it accepts again, equal to the first.
fn json_round_trip<T: Serialize + DeserializeOwned + PartialEq>(data: &[u8]) {
    let Ok(value) = serde_json::from_slice::<T>(data) else {
        return;
    };
    let json = serde_json::to_vec(&value).expect("an accepted request serializes");
    let back: T = serde_json::from_slice(&json).expect("a serialized request is accepted");
    assert!(back == value, "round trip changed the request");
}

/// Text a parser accepts displays as text it accepts again, equal to the first; the same holds
/// for its JSON form.
fn text_round_trip<T>(text: &str)
where
    T: FromStr + Display + PartialEq + Serialize + DeserializeOwned,
{
    let Ok(value) = text.parse::<T>() else {
        return;
    };
    let shown = value.to_string();
    assert!(
        shown.parse::<T>().is_ok_and(|back| back == value),
        "display round trip failed"
    );
    let json = serde_json::to_string(&value).expect("an accepted value serializes");
    let back: T = serde_json::from_str(&json).expect("a serialized value is accepted");
    assert!(back == value, "JSON round trip changed the value");
}
