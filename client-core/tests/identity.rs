//! Certificates, device lists, revocation and safety numbers.

// Test helpers outside #[test] functions may unwrap too (clippy.toml only covers the tests).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use handover_core::identity::{
    CERTIFICATE_CLOCK_SKEW, CertificateError, DeviceCertificate, DeviceKeys, OrgRootKey, OrgTrust,
    Role, SafetyNumber,
};
use handover_core::testing::TestRng;

const NOW: u64 = 1_800_000_000;

fn setup(rng: &mut TestRng) -> (OrgRootKey, DeviceKeys) {
    (OrgRootKey::generate(rng), DeviceKeys::generate(rng))
}

#[test]
fn certificate_round_trip() {
    let mut rng = TestRng::seeded(1);
    let (org, dev) = setup(&mut rng);
    let signed = org
        .issue_certificate(
            &dev.public_keys(),
            Role::Admin,
            NOW - 10,
            NOW + 10,
            "laptop",
        )
        .unwrap();
    let cert = DeviceCertificate::verify(&signed, &org.public_key(), NOW).unwrap();
    assert_eq!(cert.device_id(), dev.device_id());
    assert_eq!(cert.identity_key(), dev.public_keys().identity_key);
    assert_eq!(cert.signing_key(), dev.public_keys().signing_key);
    assert_eq!(cert.role(), Role::Admin);
    assert_eq!(cert.label(), "laptop");
    assert_eq!(cert.signed(), &signed);
}

#[test]
fn certificate_validity_is_checked() {
    let mut rng = TestRng::seeded(2);
    let (org, dev) = setup(&mut rng);
    let signed = org
        .issue_certificate(&dev.public_keys(), Role::Caseworker, NOW, NOW + 10, "")
        .unwrap();
    let root = org.public_key();
    // A clock up to CERTIFICATE_CLOCK_SKEW behind the issuer's accepts the certificate;
    // further behind, it is not yet valid.
    assert!(DeviceCertificate::verify(&signed, &root, NOW - 5).is_ok());
    assert!(DeviceCertificate::verify(&signed, &root, NOW - CERTIFICATE_CLOCK_SKEW).is_ok());
    assert_eq!(
        DeviceCertificate::verify(&signed, &root, NOW - CERTIFICATE_CLOCK_SKEW - 1),
        Err(CertificateError::NotYetValid)
    );
    assert!(DeviceCertificate::verify(&signed, &root, NOW + 9).is_ok());
    assert_eq!(
        DeviceCertificate::verify(&signed, &root, NOW + 10),
        Err(CertificateError::Expired)
    );
    assert_eq!(
        org.issue_certificate(&dev.public_keys(), Role::Caseworker, NOW, NOW, ""),
        Err(CertificateError::InvalidParameters)
    );
}

#[test]
fn tampered_or_foreign_certificate_is_rejected() {
    let mut rng = TestRng::seeded(3);
    let (org, dev) = setup(&mut rng);
    let other = OrgRootKey::generate(&mut rng);
    let signed = org
        .issue_certificate(&dev.public_keys(), Role::Ambassador, NOW - 1, NOW + 1, "x")
        .unwrap();
    assert_eq!(
        DeviceCertificate::verify(&signed, &other.public_key(), NOW),
        Err(CertificateError::BadSignature)
    );
    for i in 0..signed.certificate.len() {
        let mut t = signed.clone();
        t.certificate[i] ^= 1;
        assert!(DeviceCertificate::verify(&t, &org.public_key(), NOW).is_err());
    }
    let mut t = signed.clone();
    t.signature[5] ^= 0x40;
    assert_eq!(
        DeviceCertificate::verify(&t, &org.public_key(), NOW),
        Err(CertificateError::BadSignature)
    );
}

#[test]
fn device_list_revocation_and_rollback() {
    let mut rng = TestRng::seeded(4);
    let org = OrgRootKey::generate(&mut rng);
    let a = DeviceKeys::generate(&mut rng);
    let b = DeviceKeys::generate(&mut rng);
    let cert_a = org
        .issue_certificate(&a.public_keys(), Role::Caseworker, NOW - 1, NOW + 100, "a")
        .unwrap();
    let cert_b = org
        .issue_certificate(&b.public_keys(), Role::Caseworker, NOW - 1, NOW + 100, "b")
        .unwrap();
    let mut trust = OrgTrust::new(org.public_key());
    let v1 = org.sign_device_list(1, NOW, vec![cert_a.clone(), cert_b.clone()], &[]);
    trust.apply_device_list(&v1).unwrap();
    assert_eq!(trust.active_devices(NOW).len(), 2);
    assert!(trust.verify_certificate(&cert_b, NOW).is_ok());

    // Revoke b.
    let v2 = org.sign_device_list(2, NOW, vec![cert_a.clone()], &[b.device_id()]);
    trust.apply_device_list(&v2).unwrap();
    assert_eq!(
        trust.verify_certificate(&cert_b, NOW),
        Err(CertificateError::Revoked)
    );
    assert_eq!(trust.active_devices(NOW).len(), 1);

    // Rollback refused, same version must be identical.
    assert_eq!(
        trust.apply_device_list(&v1),
        Err(CertificateError::Rollback)
    );
    trust.apply_device_list(&v2).unwrap();
    let v2b = org.sign_device_list(2, NOW + 1, vec![cert_a.clone()], &[b.device_id()]);
    assert_eq!(
        trust.apply_device_list(&v2b),
        Err(CertificateError::Equivocation)
    );

    // A later list that forgets the revocation cannot reactivate b.
    let v3 = org.sign_device_list(3, NOW, vec![cert_a.clone(), cert_b.clone()], &[]);
    assert_eq!(
        trust.apply_device_list(&v3),
        Err(CertificateError::RevokedDeviceListed)
    );
    let v4 = org.sign_device_list(4, NOW, vec![cert_a.clone()], &[]);
    trust.apply_device_list(&v4).unwrap();
    assert!(trust.is_revoked(&b.device_id()));
    assert_eq!(trust.device_list_version(), Some(4));

    // Lists signed by another root are refused and change nothing.
    let other = OrgRootKey::generate(&mut rng);
    let forged = other.sign_device_list(9, NOW, vec![], &[]);
    assert_eq!(
        trust.apply_device_list(&forged),
        Err(CertificateError::BadSignature)
    );
    assert_eq!(trust.device_list_version(), Some(4));
}

#[test]
fn once_a_list_is_known_only_the_listed_certificate_is_accepted() {
    let mut rng = TestRng::seeded(5);
    let org = OrgRootKey::generate(&mut rng);
    let dev = DeviceKeys::generate(&mut rng);
    let other = DeviceKeys::generate(&mut rng);
    let as_admin = org
        .issue_certificate(&dev.public_keys(), Role::Admin, NOW - 1, NOW + 100, "d")
        .unwrap();
    let demoted = org
        .issue_certificate(
            &dev.public_keys(),
            Role::Caseworker,
            NOW - 1,
            NOW + 100,
            "d",
        )
        .unwrap();
    let unlisted = org
        .issue_certificate(
            &other.public_keys(),
            Role::Caseworker,
            NOW - 1,
            NOW + 100,
            "o",
        )
        .unwrap();
    let mut trust = OrgTrust::new(org.public_key());
    // No list known yet: any certificate of the root is accepted.
    assert!(trust.verify_certificate(&as_admin, NOW).is_ok());
    // The organisation demotes the admin: the list now holds the caseworker certificate.
    let list = org.sign_device_list(1, NOW, vec![demoted.clone()], &[]);
    trust.apply_device_list(&list).unwrap();
    assert_eq!(
        trust.verify_certificate(&as_admin, NOW),
        Err(CertificateError::NotListed)
    );
    assert_eq!(
        trust.verify_certificate(&demoted, NOW).unwrap().role(),
        Role::Caseworker
    );
    // A device the list does not name (enrolled after it) is checked as before.
    assert!(trust.verify_certificate(&unlisted, NOW).is_ok());
}

#[test]
fn safety_numbers_agree_and_qr_verifies() {
    let mut rng = TestRng::seeded(5);
    let (org_a, a) = setup(&mut rng);
    let (org_b, b) = setup(&mut rng);
    let ca = org_a
        .issue_certificate(&a.public_keys(), Role::Caseworker, NOW - 1, NOW + 1, "")
        .unwrap();
    let cb = org_b
        .issue_certificate(&b.public_keys(), Role::Caseworker, NOW - 1, NOW + 1, "")
        .unwrap();
    let ca = DeviceCertificate::verify(&ca, &org_a.public_key(), NOW).unwrap();
    let cb = DeviceCertificate::verify(&cb, &org_b.public_key(), NOW).unwrap();
    let at_a = SafetyNumber::new(&ca, &cb);
    let at_b = SafetyNumber::new(&cb, &ca);
    assert_eq!(at_a.digits(), at_b.digits());
    assert_eq!(at_a.digits().len(), 60);
    assert!(at_a.digits().chars().all(|c| c.is_ascii_digit()));
    assert!(at_a.matches_scanned(&at_b.qr_payload()));
    assert!(at_b.matches_scanned(&at_a.qr_payload()));
    assert!(!at_a.matches_scanned(&at_a.qr_payload()));
    let mut bad = at_b.qr_payload();
    bad[40] ^= 1;
    assert!(!at_a.matches_scanned(&bad));

    // Read aloud in twelve groups of five; what was read matches whatever the separators.
    let grouped = at_a.grouped();
    let groups: Vec<&str> = grouped.split(' ').collect();
    assert_eq!(groups.len(), 12);
    assert!(groups.iter().all(|g| g.len() == 5));
    assert_eq!(grouped.replace(' ', ""), at_a.digits());
    assert!(at_b.matches_digits(&grouped));
    assert!(at_b.matches_digits(&format!("  {}\n", groups.join("-"))));
    // One digit off, one missing, one extra: no match.
    let digits = at_a.digits();
    let last = digits.as_bytes()[59];
    let flipped = format!("{}{}", &digits[..59], if last == b'0' { '1' } else { '0' });
    assert!(!at_b.matches_digits(&flipped));
    assert!(!at_b.matches_digits(&digits[..59]));
    assert!(!at_b.matches_digits(&format!("{digits}0")));
    assert!(!at_b.matches_digits(""));
}

#[test]
fn device_keys_serialise() {
    let mut rng = TestRng::seeded(6);
    let keys = DeviceKeys::generate(&mut rng);
    let bytes = keys.to_secret_bytes();
    let back = DeviceKeys::from_secret_bytes(&bytes).unwrap();
    assert_eq!(back.public_keys(), keys.public_keys());
    assert!(DeviceKeys::from_secret_bytes(&bytes[..bytes.len() - 1]).is_err());
    let root = OrgRootKey::generate(&mut rng);
    let back = OrgRootKey::from_secret_bytes(&root.to_secret_bytes());
    assert_eq!(back.public_key(), root.public_key());
    // Debug output carries no secrets.
    let dbg = format!("{keys:?}");
    assert!(!dbg.contains(&format!("{:?}", &bytes[17..49])));
}
