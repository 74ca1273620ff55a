//! Export of a receipt as a Kantara Consent Receipt v1.1 JSON object (docs/PROTOCOL.md §12.4).

use handover_proto::e2e::v1 as wire;
use serde_json::{Value, json};

use super::SignedReceipt;
use crate::referral::section_name;

/// The Kantara `version` value.
pub const KANTARA_VERSION: &str = "KI-CR-v1.1.0";

fn collection_method(r: &wire::ConsentReceipt) -> String {
    match r.collection_method() {
        wire::CollectionMethod::InPersonVerbal => "in person, verbal".to_owned(),
        wire::CollectionMethod::Signed => "signed form".to_owned(),
        wire::CollectionMethod::Phone => "phone".to_owned(),
        wire::CollectionMethod::ViaInterpreter => {
            format!("via interpreter ({})", r.interpreter_language)
        }
        wire::CollectionMethod::Unspecified => "unspecified".to_owned(),
    }
}

fn service_names(services: &[i32]) -> Vec<&'static str> {
    services
        .iter()
        .filter_map(|s| wire::Service::try_from(*s).ok())
        .map(|s| s.as_str_name().trim_start_matches("SERVICE_"))
        .collect()
}

/// The receipt as a Kantara Consent Receipt v1.1 JSON object.
///
/// Mapping: `consentTimestamp` = `event_time` (integer epoch seconds); `consentReceiptID` = the
/// receipt id as a UUID; `publicKey` = the signing device's Ed25519 key (hex);
/// `jurisdiction` = the jurisdictions joined by ", "; `language` = `notice_language`;
/// `policyUrl` = `notice_ref`; one `services` entry per recipient organisation, each with every
/// purpose, `consentType`, `piiCategory` = the data categories (body sections),
/// `termination` = the withdrawal method, `thirdPartyDisclosure` = true and `thirdPartyName` =
/// the recipient (the disclosure to the recipient is what the person consented to);
/// `sensitive`, `spiCat` = special categories. Handover fields Kantara lacks (state,
/// supersedes, validity, withheld sections, onward sharing, retention) are under the
/// `handover` extension member.
pub fn kantara_json(receipt: &SignedReceipt) -> Value {
    let r = receipt.receipt();
    let pii_categories: Vec<&str> = r
        .data_categories
        .iter()
        .filter_map(|s| wire::Section::try_from(*s).ok())
        .map(section_name)
        .collect();
    let controllers: Vec<Value> = r
        .controllers
        .iter()
        .map(|c| {
            json!({
                "piiController": c.name,
                "onBehalf": false,
                "contact": c.contact,
                "address": { "streetAddress": c.address },
                "email": c.email,
                "phone": c.phone,
            })
        })
        .collect();
    let services: Vec<Value> = r
        .recipients
        .iter()
        .map(|recipient| {
            let purposes: Vec<Value> = r
                .purposes
                .iter()
                .map(|p| {
                    json!({
                        "purpose": p.purpose,
                        "purposeCategory": [p.category],
                        "consentType": r.consent_type,
                        "piiCategory": pii_categories,
                        "primaryPurpose": p.primary,
                        "termination": r.withdrawal_method,
                        "thirdPartyDisclosure": true,
                        "thirdPartyName": recipient.org_name,
                    })
                })
                .collect();
            let names = service_names(&recipient.services);
            let service = if names.is_empty() {
                format!("referral to {}", recipient.org_name)
            } else {
                format!("referral to {}: {}", recipient.org_name, names.join(", "))
            };
            json!({ "service": service, "purposes": purposes })
        })
        .collect();
    let withheld: Vec<Value> = r
        .withheld
        .iter()
        .map(|w| {
            json!({
                "section": wire::Section::try_from(w.section).map(section_name).unwrap_or("UNSPECIFIED"),
                "fromWhom": w.from_whom,
            })
        })
        .collect();
    json!({
        "version": KANTARA_VERSION,
        "jurisdiction": r.jurisdictions.join(", "),
        "consentTimestamp": r.event_time,
        "collectionMethod": collection_method(r),
        "consentReceiptID": receipt.id().to_uuid_string(),
        "publicKey": hex::encode(receipt.signer().signing_key()),
        "language": r.notice_language,
        "piiPrincipalId": r.principal_ref,
        "piiControllers": controllers,
        "policyUrl": r.notice_ref,
        "services": services,
        "sensitive": r.sensitive,
        "spiCat": r.special_categories,
        "handover": {
            "schemaVersion": r.schema_version,
            "state": super::receipt::state_name(r.state()),
            "supersedes": super::ReceiptId::from_slice(&r.supersedes).map(|id| id.to_uuid_string()),
            "validUntil": (r.valid_until != 0).then_some(r.valid_until),
            "legalBasis": r.legal_basis.as_ref().map(|b| b.basis.clone()),
            "withheld": withheld,
            "onwardSharing": r.onward_sharing,
            "retentionSeconds": r.retention_secs,
            "storageLocations": r.storage_locations,
        },
    })
}
