//! Private, versioned layouts of the engine's records in the local store.
//!
//! Every record starts with a format byte. Wire messages inside records are their protobuf
//! encodings, length-prefixed (`u32be(len) || bytes`); they are decoded with the
//! `handover_proto::decode` rules on load. Nothing here travels on the wire.

use ed25519_dalek::SigningKey;
use prost::Message as _;
use zeroize::Zeroizing;

use handover_proto::e2e::v1 as wire;
use handover_proto::limits::ID_LEN;
use handover_proto::relay::v1 as relay;
use handover_proto::validate::Validate;

use super::{
    Direction, EngineError, Message, OfferGlance, OutboxItem, ReferralListEntry, RelayInfo,
};
use crate::encoding::{Reader, Writer};
use crate::identity::{DeviceId, DeviceKeys, OrgRootKey};
use crate::referral::{ReferralId, Side, decode_state, encode_state};
use crate::sealed::MailboxSealingKey;

const FORMAT: u8 = 1;

fn corrupt() -> EngineError {
    EngineError::CorruptState
}

pub(super) trait WriterExt {
    fn lp(&mut self, bytes: &[u8]);
}

impl WriterExt for Writer {
    fn lp(&mut self, bytes: &[u8]) {
        // Records are bounded by the store's MAX_VALUE_LEN (16 MiB), far below u32::MAX.
        self.u32(u32::try_from(bytes.len()).unwrap_or(u32::MAX));
        self.bytes(bytes);
    }
}

pub(super) trait ReaderExt<'a> {
    fn lp(&mut self) -> Result<&'a [u8], EngineError>;
    fn string(&mut self) -> Result<String, EngineError>;
    fn wire<M: prost::Message + Default + Validate>(&mut self) -> Result<M, EngineError>;
}

impl<'a> ReaderExt<'a> for Reader<'a> {
    fn lp(&mut self) -> Result<&'a [u8], EngineError> {
        let len = self.u32().ok_or_else(corrupt)?;
        self.take(len as usize).ok_or_else(corrupt)
    }

    fn string(&mut self) -> Result<String, EngineError> {
        String::from_utf8(self.lp()?.to_vec()).map_err(|_| corrupt())
    }

    fn wire<M: prost::Message + Default + Validate>(&mut self) -> Result<M, EngineError> {
        let m = M::decode(self.lp()?).map_err(|_| corrupt())?;
        m.validate().map_err(|_| corrupt())?;
        Ok(m)
    }
}

fn finish(r: &Reader<'_>) -> Result<(), EngineError> {
    if r.is_empty() { Ok(()) } else { Err(corrupt()) }
}

fn start(bytes: &[u8]) -> Result<Reader<'_>, EngineError> {
    let mut r = Reader::new(bytes);
    if r.u8() != Some(FORMAT) {
        return Err(corrupt());
    }
    Ok(r)
}

/// This device's long-term state.
pub(super) struct ProfileRecord {
    pub(super) device: DeviceKeys,
    pub(super) certificate: wire::SignedDeviceCertificate,
    pub(super) org_key: Option<OrgRootKey>,
    pub(super) relay: RelayInfo,
    pub(super) recv_id: [u8; ID_LEN],
    pub(super) send_id: [u8; ID_LEN],
    pub(super) auth: Box<SigningKey>,
    pub(super) sealing: MailboxSealingKey,
    pub(super) display_name: String,
    pub(super) next_prekey_id: u32,
}

impl ProfileRecord {
    pub(super) fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut w = Writer::new(FORMAT);
        w.lp(&self.device.to_secret_bytes());
        w.lp(&self.certificate.encode_to_vec());
        match &self.org_key {
            Some(k) => {
                w.u8(1);
                w.bytes(&k.to_secret_bytes()[..]);
            }
            None => w.u8(0),
        }
        w.lp(self.relay.host_port.as_bytes());
        w.bytes(&self.relay.pin);
        w.bytes(&self.recv_id);
        w.bytes(&self.send_id);
        w.bytes(&Zeroizing::new(self.auth.to_bytes())[..]);
        w.bytes(&self.sealing.to_secret_bytes()[..]);
        w.lp(self.display_name.as_bytes());
        w.u32(self.next_prekey_id);
        Zeroizing::new(w.finish())
    }

    pub(super) fn decode(bytes: &[u8]) -> Result<Self, EngineError> {
        let mut r = start(bytes)?;
        let device = DeviceKeys::from_secret_bytes(r.lp()?).map_err(|_| corrupt())?;
        let certificate = r.wire()?;
        let org_key = match r.u8().ok_or_else(corrupt)? {
            0 => None,
            1 => {
                let seed = Zeroizing::new(r.array::<32>().ok_or_else(corrupt)?);
                Some(OrgRootKey::from_secret_bytes(&seed))
            }
            _ => return Err(corrupt()),
        };
        let host_port = r.string()?;
        let pin = r.array().ok_or_else(corrupt)?;
        let recv_id = r.array().ok_or_else(corrupt)?;
        let send_id = r.array().ok_or_else(corrupt)?;
        let auth_seed = Zeroizing::new(r.array::<32>().ok_or_else(corrupt)?);
        let sealing_secret = Zeroizing::new(r.array::<32>().ok_or_else(corrupt)?);
        let display_name = r.string()?;
        let next_prekey_id = r.u32().ok_or_else(corrupt)?;
        finish(&r)?;
        Ok(Self {
            device,
            certificate,
            org_key,
            relay: RelayInfo { host_port, pin },
            recv_id,
            send_id,
            auth: Box::new(SigningKey::from_bytes(&auth_seed)),
            sealing: MailboxSealingKey::from_secret_bytes(&sealing_secret),
            display_name,
            next_prekey_id,
        })
    }
}

/// What this device knows about one organisation: every device list it accepted, in order
/// (replayed on load so revocations accumulate exactly as when they were first applied).
pub(super) fn encode_org(root: &[u8; 32], lists: &[wire::SignedDeviceList]) -> Vec<u8> {
    let mut w = Writer::new(FORMAT);
    w.bytes(root);
    w.u32(u32::try_from(lists.len()).unwrap_or(u32::MAX));
    for list in lists {
        w.lp(&list.encode_to_vec());
    }
    w.finish()
}

pub(super) fn decode_org(
    bytes: &[u8],
) -> Result<([u8; 32], Vec<wire::SignedDeviceList>), EngineError> {
    let mut r = start(bytes)?;
    let root = r.array().ok_or_else(corrupt)?;
    let n = r.u32().ok_or_else(corrupt)?;
    let mut lists = Vec::new();
    for _ in 0..n {
        lists.push(r.wire()?);
    }
    finish(&r)?;
    Ok((root, lists))
}

/// A known remote device.
pub(super) struct ContactRecord {
    pub(super) certificate: wire::SignedDeviceCertificate,
    pub(super) address: Option<wire::DeviceAddress>,
    pub(super) display_name: String,
}

impl ContactRecord {
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new(FORMAT);
        w.lp(&self.certificate.encode_to_vec());
        match &self.address {
            Some(a) => {
                w.u8(1);
                w.lp(&a.encode_to_vec());
            }
            None => w.u8(0),
        }
        w.lp(self.display_name.as_bytes());
        w.finish()
    }

    pub(super) fn decode(bytes: &[u8]) -> Result<Self, EngineError> {
        let mut r = start(bytes)?;
        let certificate = r.wire()?;
        let address = match r.u8().ok_or_else(corrupt)? {
            0 => None,
            1 => Some(r.wire()?),
            _ => return Err(corrupt()),
        };
        let display_name = r.string()?;
        finish(&r)?;
        Ok(Self {
            certificate,
            address,
            display_name,
        })
    }
}

/// Length of a verified-contact binding: the contact certificate's signing key, identity key and
/// organisation root.
pub(super) const VERIFIED_LEN: usize = 3 * 32;

/// The certificate keys for which the user compared a contact's safety number. With the
/// device id (the record name) and this device's own certificate (whose keys never change),
/// they are the whole input of the safety number (docs/PROTOCOL.md §5.4), so the contact
/// counts as verified exactly while its certificate still has these keys.
pub(super) fn encode_verified(binding: &[u8; VERIFIED_LEN]) -> Vec<u8> {
    let mut w = Writer::new(FORMAT);
    w.bytes(binding);
    w.finish()
}

pub(super) fn decode_verified(bytes: &[u8]) -> Result<[u8; VERIFIED_LEN], EngineError> {
    let mut r = start(bytes)?;
    let binding = r.array().ok_or_else(corrupt)?;
    finish(&r)?;
    Ok(binding)
}

/// A send capability this device issued (in an invitation, a contact card or its profile).
pub(super) struct IssuedCapability {
    pub(super) capability: Zeroizing<[u8; 32]>,
    /// Unix seconds after which it is withdrawn from the relay (`u64::MAX` = never).
    pub(super) expires_at: u64,
    /// The contact it was issued to, if known.
    pub(super) contact: Option<DeviceId>,
}

pub(super) fn encode_caps(caps: &[IssuedCapability]) -> Zeroizing<Vec<u8>> {
    let mut w = Writer::new(FORMAT);
    w.u32(u32::try_from(caps.len()).unwrap_or(u32::MAX));
    for c in caps {
        w.bytes(&c.capability[..]);
        w.u64(c.expires_at);
        match c.contact {
            Some(id) => {
                w.u8(1);
                w.bytes(&id.0);
            }
            None => w.u8(0),
        }
    }
    Zeroizing::new(w.finish())
}

pub(super) fn decode_caps(bytes: &[u8]) -> Result<Vec<IssuedCapability>, EngineError> {
    let mut r = start(bytes)?;
    let n = r.u32().ok_or_else(corrupt)?;
    let mut caps = Vec::new();
    for _ in 0..n {
        let capability = Zeroizing::new(r.array::<32>().ok_or_else(corrupt)?);
        let expires_at = r.u64().ok_or_else(corrupt)?;
        let contact = match r.u8().ok_or_else(corrupt)? {
            0 => None,
            1 => Some(DeviceId(r.array().ok_or_else(corrupt)?)),
            _ => return Err(corrupt()),
        };
        caps.push(IssuedCapability {
            capability,
            expires_at,
            contact,
        });
    }
    finish(&r)?;
    Ok(caps)
}

impl Message {
    pub(super) fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut w = Writer::new(FORMAT);
        w.u64(self.seq);
        w.u8(match self.direction {
            Direction::Incoming => 1,
            Direction::Outgoing => 2,
        });
        w.bytes(&self.peer.0);
        w.bytes(&self.message_id);
        w.u64(self.sent_at);
        w.u64(self.stored_at);
        w.lp(&Zeroizing::new(self.content.encode_to_vec()));
        Zeroizing::new(w.finish())
    }

    pub(super) fn decode(bytes: &[u8]) -> Result<Self, EngineError> {
        let mut r = start(bytes)?;
        let seq = r.u64().ok_or_else(corrupt)?;
        let direction = match r.u8().ok_or_else(corrupt)? {
            1 => Direction::Incoming,
            2 => Direction::Outgoing,
            _ => return Err(corrupt()),
        };
        let peer = DeviceId(r.array().ok_or_else(corrupt)?);
        let message_id = r.array().ok_or_else(corrupt)?;
        let sent_at = r.u64().ok_or_else(corrupt)?;
        let stored_at = r.u64().ok_or_else(corrupt)?;
        let content = r.wire()?;
        finish(&r)?;
        Ok(Self {
            seq,
            direction,
            peer,
            message_id,
            sent_at,
            stored_at,
            content,
        })
    }
}

impl OutboxItem {
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new(FORMAT);
        w.lp(self.relay.host_port.as_bytes());
        w.bytes(&self.relay.pin);
        w.bytes(&self.send_id);
        w.bytes(&self.capability[..]);
        w.bytes(&self.message_id);
        w.bytes(&self.recipient.0);
        w.lp(&self.envelope.encode_to_vec());
        w.finish()
    }

    pub(super) fn decode(bytes: &[u8]) -> Result<Self, EngineError> {
        let mut r = start(bytes)?;
        let host_port = r.string()?;
        let pin = r.array().ok_or_else(corrupt)?;
        let send_id = r.array().ok_or_else(corrupt)?;
        let capability = Zeroizing::new(r.array::<32>().ok_or_else(corrupt)?);
        let message_id = r.array().ok_or_else(corrupt)?;
        let recipient = DeviceId(r.array().ok_or_else(corrupt)?);
        let envelope: relay::Envelope = r.wire()?;
        finish(&r)?;
        let envelope_id = envelope
            .envelope_id
            .as_slice()
            .try_into()
            .map_err(|_| corrupt())?;
        Ok(Self {
            envelope_id,
            relay: RelayInfo { host_port, pin },
            send_id,
            capability,
            message_id,
            recipient,
            envelope,
        })
    }
}

/// Encodes a list of serialised sessions (secrets): `FORMAT || u32be(count) || lp(session)*`.
pub(super) fn encode_sessions(sessions: &[Zeroizing<Vec<u8>>]) -> Zeroizing<Vec<u8>> {
    let mut w = Writer::new(FORMAT);
    w.u32(u32::try_from(sessions.len()).unwrap_or(u32::MAX));
    for s in sessions {
        w.lp(s);
    }
    Zeroizing::new(w.finish())
}

/// Decodes [`encode_sessions`].
pub(super) fn decode_sessions(bytes: &[u8]) -> Result<Vec<Zeroizing<Vec<u8>>>, EngineError> {
    let mut r = start(bytes)?;
    let count = r.u32().ok_or_else(corrupt)?;
    let mut out = Vec::new();
    for _ in 0..count {
        out.push(Zeroizing::new(r.lp()?.to_vec()));
        if out.len() > super::MAX_PREVIOUS_SESSIONS {
            return Err(corrupt());
        }
    }
    finish(&r)?;
    Ok(out)
}

/// A referral's list summary (`l/` + referral id in the Referrals namespace, docs/STORAGE.md):
///
/// ```text
/// FORMAT || side (1 sender, 2 receiver) || lp(state, the stored records' state layout)
///        || counterpart root (32) || u8 has_assignee [|| assignee device id (16)]
///        || u8 awaiting_release || u64 created_at || u64 updated_at
///        || u8 has_offer [|| i32 kind || i32 priority || u64 respond_by
///                         || u32 n || i32 service * n || u32 m || lp(other service) * m
///                         || lp(sender case ref)]
/// ```
///
/// Integers are big-endian; an `i32` is written as the `u32` with the same bits. `mine` is not
/// stored: it is whether the assignee is this device.
pub(super) fn encode_list_entry(e: &ReferralListEntry) -> Vec<u8> {
    let mut w = Writer::new(FORMAT);
    w.u8(match e.side {
        Side::Sender => 1,
        Side::Receiver => 2,
    });
    w.lp(&encode_state(&e.state));
    w.bytes(&e.counterpart);
    match e.assignee {
        Some(d) => {
            w.u8(1);
            w.bytes(&d.0);
        }
        None => w.u8(0),
    }
    w.u8(u8::from(e.awaiting_release));
    w.u64(e.created_at);
    w.u64(e.updated_at);
    match &e.offer {
        Some(o) => {
            w.u8(1);
            w.u32((o.kind as i32).cast_unsigned());
            w.u32((o.priority as i32).cast_unsigned());
            w.u64(o.respond_by);
            w.u32(u32::try_from(o.services.len()).unwrap_or(u32::MAX));
            for s in &o.services {
                w.u32((*s as i32).cast_unsigned());
            }
            w.u32(u32::try_from(o.other_services.len()).unwrap_or(u32::MAX));
            for s in &o.other_services {
                w.lp(s.as_bytes());
            }
            w.lp(o.case_ref.as_bytes());
        }
        None => w.u8(0),
    }
    w.finish()
}

/// Decodes [`encode_list_entry`] for referral `id` on device `own`.
pub(super) fn decode_list_entry(
    id: ReferralId,
    bytes: &[u8],
    own: DeviceId,
) -> Result<ReferralListEntry, EngineError> {
    fn flag(r: &mut Reader<'_>) -> Result<bool, EngineError> {
        match r.u8().ok_or_else(corrupt)? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(corrupt()),
        }
    }
    fn int(r: &mut Reader<'_>) -> Result<i32, EngineError> {
        Ok(r.u32().ok_or_else(corrupt)?.cast_signed())
    }
    let mut r = start(bytes)?;
    let side = match r.u8().ok_or_else(corrupt)? {
        1 => Side::Sender,
        2 => Side::Receiver,
        _ => return Err(corrupt()),
    };
    let state = decode_state(r.lp()?).map_err(|_| corrupt())?;
    let counterpart = r.array().ok_or_else(corrupt)?;
    let assignee = if flag(&mut r)? {
        Some(DeviceId(r.array().ok_or_else(corrupt)?))
    } else {
        None
    };
    let awaiting_release = flag(&mut r)?;
    let created_at = r.u64().ok_or_else(corrupt)?;
    let updated_at = r.u64().ok_or_else(corrupt)?;
    let offer = if flag(&mut r)? {
        let kind = wire::ReferralKind::try_from(int(&mut r)?).map_err(|_| corrupt())?;
        let priority = wire::Priority::try_from(int(&mut r)?).map_err(|_| corrupt())?;
        let respond_by = r.u64().ok_or_else(corrupt)?;
        let n = r.u32().ok_or_else(corrupt)?;
        let mut services = Vec::new();
        for _ in 0..n {
            services.push(wire::Service::try_from(int(&mut r)?).map_err(|_| corrupt())?);
        }
        let m = r.u32().ok_or_else(corrupt)?;
        let mut other_services = Vec::new();
        for _ in 0..m {
            other_services.push(r.string()?);
        }
        let case_ref = r.string()?;
        Some(OfferGlance {
            kind,
            priority,
            respond_by,
            services,
            other_services,
            case_ref,
        })
    } else {
        None
    };
    finish(&r)?;
    Ok(ReferralListEntry {
        id,
        side,
        state,
        counterpart,
        assignee,
        mine: side == Side::Sender && assignee == Some(own),
        awaiting_release,
        created_at,
        updated_at,
        offer,
    })
}
