"""The messaging client through the generated Python bindings, against a real relay process:
two organisations, invitation, chat both ways through the listener callback, consent, a referral
with an attachment, accept, body release, consent withdrawal and the purge confirmation, safety
numbers, the members-only directory, and the errors an app must be able to tell apart."""

import asyncio
import json
import os
import queue
import socket
import threading
import time

import pytest

import handover_ffi as h
from conftest import FAST_KDF, RelayProcess, relay_binary_or_skip

run = asyncio.run

# An upper bound for waiting on a callback, so a broken build fails instead of hanging. Nothing
# asserts how long anything took.
WAIT = 60

PURPOSE = "Safe accommodation after leaving a violent home"
SECTIONS = ["IDENTITY", "SAFE_CONTACT", "REASON", "RISK", "ATTACHMENTS"]


class Listener(h.MessageListener):
    """Collects what the client delivers, from whichever thread it arrives on."""

    def __init__(self):
        self.items = queue.Queue()
        self.threads = set()

    def on_message(self, message):
        self.threads.add(threading.current_thread().name)
        self.items.put(("message", message))

    def on_event(self, event):
        self.threads.add(threading.current_thread().name)
        self.items.put(("event", event))

    def wait_for(self, what, predicate):
        """The first delivered item matching `predicate`; fails after WAIT seconds."""
        deadline = time.monotonic() + WAIT
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"the listener never received {what}")
            try:
                kind, item = self.items.get(timeout=left)
            except queue.Empty:
                continue
            if predicate(kind, item):
                return item

    def wait_message(self, what, predicate):
        return self.wait_for(what, lambda k, m: k == "message" and predicate(m))

    def wait_referral(self, what, predicate):
        return self.wait_for(
            what,
            lambda k, e: k == "event" and isinstance(e, h.ClientEvent.REFERRAL)
            and predicate(e.event))


class Progress(h.ProgressListener):
    def __init__(self):
        self.calls = []

    def on_progress(self, done, total):
        self.calls.append((done, total))


def passphrase(p):
    return h.Credential.PASSPHRASE(passphrase=p)


@pytest.fixture
def clients():
    """Shuts down every client a test opened, even when it fails: a listener left registered
    would be called from a library thread while the interpreter exits."""
    opened = []
    yield opened
    for client in opened:
        client.clear_message_listener()
        try:
            run(client.shutdown())
        except h.HandoverError:
            pass


def new_org(clients, relay, path, name, credential):
    client = run(h.Client.create_organisation(
        str(path), credential, FAST_KDF, relay.address, relay.pin, f"{name} intake", name))
    clients.append(client)
    return client


def consent_draft(b_root, sections=SECTIONS):
    return h.ConsentDraft(
        principal_ref="P-7Q2X",
        expressed_by="SURVIVOR",
        collection_method="VIA_INTERPRETER",
        interpreter_language="ar",
        purposes=[h.ConsentPurpose(purpose=PURPOSE, category="referral", primary=True)],
        recipients=[h.ConsentRecipient(org_root=b_root, org_name="Riverside Safe House",
                                       services=["SHELTER"])],
        data_categories=sections,
        legal_basis="GDPR Art. 6(1)(a) and Art. 9(2)(a) explicit consent",
        controllers=[h.ConsentController(name="Harbour Women's Centre",
                                         contact="Data protection officer")],
        witness_caseworker_id="CW-12",
        witness_org_name="Harbour Women's Centre",
        principal_ack_method="VERBAL_WITNESSED",
        withdrawal_method="Tell your caseworker at Harbour Women's Centre, any time.",
        retention_secs=90 * 86400,
        jurisdictions=["BE"],
        notice_ref="https://example.org/privacy/v3",
        notice_language="ar",
        sensitive=True,
        special_categories=["health"],
    )


def referral_draft(a_root, b_root):
    return h.ReferralDraft(
        kind="REFERRAL",
        sender_case_ref="HWC-0193",
        from_party=h.Party(org_root=a_root, org_name="Harbour Women's Centre",
                      worker_name="Duty caseworker", role=h.Role.ADMIN,
                      contact="Reply through Handover"),
        to_party=h.Party(org_root=b_root, org_name="Riverside Safe House"),
        services_requested=["SHELTER"],
        priority="URGENT",
        purpose=PURPOSE,
        age_band="ADULT",
        retain_until=int(time.time()) + 60 * 86400,
        retention_rule="Erase 60 days after the offer",
        languages=["ar"],
        interpreter_needed=True,
    )


def body(attachment, extra=()):
    return [
        h.BodySection.IDENTITY(name_or_alias="Amina Haddad", preferred_name="Amina",
                               preferred_term="survivor"),
        h.BodySection.SAFE_CONTACT(safe_to_contact=True, channels=["phone"],
                                   code_word="bluebird", details="+32 470 12 34 56"),
        h.BodySection.REASON(reason="Left a violent partner two days ago."),
        h.BodySection.RISK(level="HIGH", immediate_concerns="Partner is searching for her."),
        h.BodySection.ATTACHMENTS(attachments=[attachment]),
        *extra,
    ]


def test_two_organisations_full_flow(relay, tmp_path, clients):
    a = new_org(clients, relay, tmp_path / "a", "Harbour", passphrase("harbour passphrase"))
    b = new_org(clients, relay, tmp_path / "b",
                "Riverside", h.Credential.KEYSTORE_KEY(key=os.urandom(32)))
    a_id, b_id = run(a.identity()), run(b.identity())
    assert a_id.role == h.Role.ADMIN and a_id.holds_org_key
    assert a_id.org_root != b_id.org_root
    assert h.org_fingerprint(b_id.org_root) == b_id.org_fingerprint

    # Fingerprints compared in person: each organisation trusts the other.
    run(a.trust_organisation(b_id.org_root))
    run(b.trust_organisation(a_id.org_root))

    a_inbox, b_inbox = Listener(), Listener()
    a.set_message_listener(a_inbox)
    b.set_message_listener(b_inbox)
    a.start()
    b.start()

    # --- Invitation: link and QR payload, read before accepting, accepted.
    invitation = run(a.create_invitation(3600))
    assert invitation.link.startswith("handover://invite#")
    assert invitation.qr_payload == invitation.link
    info = h.invitation_info(invitation.link)
    assert info.org_root == a_id.org_root and info.display_name == "Harbour"
    qr = h.qr_code(invitation.qr_payload)
    assert len(qr.modules) == qr.size * qr.size and qr.svg.startswith("<svg")
    assert run(b.accept_invitation(invitation.link)) == a_id.device_id
    # B's first message carries its reply address; A's background task receives it.
    a_inbox.wait_message("B's contact card", lambda m: m.peer == b_id.device_id)
    contact = next(c for c in run(a.contacts()) if c.device_id == b_id.device_id)
    assert contact.has_address and contact.org_root == b_id.org_root
    # A peer is its organisation and device: the peer id names it unambiguously, and works
    # wherever a contact is named; no safety number changed yet.
    assert contact.peer_id == b_id.org_root + b_id.device_id
    assert not contact.identity_changed
    assert run(a.safety_number(contact.peer_id)).digits \
        == run(a.safety_number(b_id.device_id)).digits

    # --- Chat both ways, delivered through the listener callback.
    sent = run(b.send_text(a_id.device_id, "Can you take a referral tonight?", []))
    assert sent.direction == h.MessageDirection.OUTGOING and sent.kind == h.MessageKind.CHAT
    got = a_inbox.wait_message("B's chat message", lambda m: m.kind == h.MessageKind.CHAT)
    assert got.text == "Can you take a referral tonight?"
    assert got.direction == h.MessageDirection.INCOMING and got.peer == b_id.device_id
    assert got.message_id == sent.message_id
    # Replacing B's listener: the new one gets the next message, the old one nothing more.
    old_inbox, b_inbox = b_inbox, Listener()
    b.set_message_listener(b_inbox)
    run(a.send_text(b_id.device_id, "Yes, send it through Handover.", []))
    got = b_inbox.wait_message("A's chat message", lambda m: m.kind == h.MessageKind.CHAT)
    assert got.text == "Yes, send it through Handover."
    assert not any(kind == "message" and item.kind == h.MessageKind.CHAT
                   for kind, item in list(old_inbox.items.queue))
    assert any(m.text == "Yes, send it through Handover." for m in run(b.inbox(0)))

    # --- Consent, attachment with progress.
    receipt = run(a.record_consent(consent_draft(b_id.org_root)))
    assert receipt.state == "GIVEN" and receipt.recipients == [b_id.org_root]
    document = b"Letter from the GP, for the safe house nurse only.\n" * 8000
    up = Progress()
    attachment = run(a.upload_attachment(document, "text/plain", "letter.txt", up))
    assert attachment.size() == len(document) and attachment.file_name() == "letter.txt"
    assert up.calls, "upload progress was reported"
    assert up.calls[-1][0] == up.calls[-1][1]
    assert [d for d, _ in up.calls] == sorted(d for d, _ in up.calls)

    # --- The consent gate refuses a section the consent does not cover, naming it.
    with pytest.raises(h.HandoverError.ConsentRefused) as refused:
        run(a.send_referral(referral_draft(a_id.org_root, b_id.org_root),
                            body(attachment, [h.BodySection.LOCATION(location="Room 4")]),
                            h.ReferralConsent.RECEIPT(receipt_id=receipt.receipt_id)))
    assert "LOCATION" in str(refused.value) and "not covered" in str(refused.value)
    assert run(a.referrals()) == []

    # --- The referral.
    rid = run(a.send_referral(referral_draft(a_id.org_root, b_id.org_root), body(attachment),
                              h.ReferralConsent.RECEIPT(receipt_id=receipt.receipt_id)))
    sent = run(a.referral(rid))
    assert sent.state == "SENT"
    # The organisation's case, assigned to the device that sent it; no colleague to share with.
    assert sent.mine and sent.assignee_device == a_id.device_id and sent.team == []
    assert run(a.share_cases()) == 0
    b_inbox.wait_referral("the offer", lambda e: isinstance(
        e, h.ReferralEvent.OFFER_RECEIVED) and e.referral_id == rid)
    offer = run(b.referral(rid))
    assert offer.side == h.ReferralSide.RECEIVER and offer.counterpart_org == a_id.org_root
    assert offer.offer.purpose == PURPOSE and offer.offer.services_requested == ["SHELTER"]
    assert offer.offer.consent_receipt_id == receipt.receipt_id
    assert sorted(offer.offer.sections_included) == sorted(SECTIONS)
    assert run(b.referral_body(rid)) == [], "no body before ACCEPTED"

    # --- B accepts; A releases the body; B reads it and downloads the attachment.
    assert run(b.referral_act(rid, h.ReferralAction.ACKNOWLEDGE())) == "ACKNOWLEDGED"
    assert run(b.referral_act(rid, h.ReferralAction.ACCEPT())) == "ACCEPTED"
    a_inbox.wait_referral("the accept", lambda e: isinstance(
        e, h.ReferralEvent.RELEASE_BODY) and e.referral_id == rid)
    assert run(a.referral(rid)).state == "ACCEPTED"
    assert run(a.pending_releases()) == [rid]
    assert run(a.due_releases()) == [rid], "the holder releases at once"
    assert run(a.release_referral_body(rid)) == 1
    assert run(a.pending_releases()) == [] and run(a.due_releases()) == []
    [released] = run(a.referral(rid)).team
    assert released.action == "RELEASED" and released.device_id == a_id.device_id
    with pytest.raises(h.HandoverError):
        run(a.release_referral_body(rid))
    b_inbox.wait_referral("the body", lambda e: isinstance(
        e, h.ReferralEvent.BODY_RECEIVED) and e.referral_id == rid)
    sections = run(b.referral_body(rid))
    identity = next(s for s in sections if isinstance(s, h.BodySection.IDENTITY))
    assert identity.name_or_alias == "Amina Haddad" and identity.preferred_term == "survivor"
    risk = next(s for s in sections if isinstance(s, h.BodySection.RISK))
    assert risk.level == "HIGH"
    files = next(s for s in sections if isinstance(s, h.BodySection.ATTACHMENTS)).attachments
    down = Progress()
    assert run(b.download_attachment(files[0], down)) == document
    assert down.calls and down.calls[-1] == (len(document), len(document))
    # The same attachment streamed into a file; a file streamed up and back.
    saved = tmp_path / "saved-letter.txt"
    assert run(b.download_attachment_to_file(files[0], str(saved), None)) == len(document)
    assert saved.read_bytes() == document
    scan = tmp_path / "scan.bin"
    scan.write_bytes(bytes(i % 251 for i in range(700_000)))
    up_file = Progress()
    uploaded = run(a.upload_attachment_file(str(scan), "application/octet-stream", "scan.bin",
                                            up_file))
    assert uploaded.size() == 700_000 and up_file.calls
    back = tmp_path / "scan-back.bin"
    assert run(a.download_attachment_to_file(uploaded, str(back), None)) == 700_000
    assert back.read_bytes() == scan.read_bytes()
    with pytest.raises(h.HandoverError.InvalidArgument):
        run(a.upload_attachment_file(str(tmp_path / "missing.bin"), "x/y", "missing", None))

    # --- Consent exports.
    kantara = json.loads(run(a.export_consent_kantara(receipt.receipt_id)))
    assert kantara["consentReceiptID"] == receipt.receipt_id
    copy = run(a.consent_survivor_copy(receipt.receipt_id, "en", "Amina", "survivor", None))
    assert "Amina" in copy
    run(a.consent_survivor_copy(receipt.receipt_id, "ar", None, "", None))

    # --- The survivor withdraws consent: B erases and confirms, A sees the confirmation.
    withdrawn = run(a.change_consent(receipt.receipt_id, h.ConsentChange.WITHDRAWN))
    assert withdrawn.state == "WITHDRAWN" and withdrawn.supersedes == receipt.receipt_id
    listed = {r.receipt_id: r.state for r in run(a.consent_receipts())}
    assert listed == {receipt.receipt_id: "GIVEN", withdrawn.receipt_id: "WITHDRAWN"}
    b_inbox.wait_referral("the erasure", lambda e: isinstance(
        e, h.ReferralEvent.ERASED) and e.referral_id == rid)
    assert run(b.referral_body(rid)) == []
    a_inbox.wait_referral("the purge confirmation", lambda e: isinstance(
        e, h.ReferralEvent.PURGE_CONFIRMED) and e.referral_id == rid)
    [report] = run(a.purge_status(receipt.receipt_id))
    assert report.referral_id == rid and report.recipient_org == b_id.org_root
    assert report.confirmed == [b_id.device_id] and report.pending == []
    assert isinstance(report.status, h.PurgeState.CONFIRMED)
    assert run(a.referral(rid)).state == "PURGE_CONFIRMED"
    timeline = json.loads(run(a.referral(rid)).timeline_json)
    assert len(timeline["entries"]) >= 5

    # A step the lifecycle does not allow is refused with the state named; nothing changes.
    with pytest.raises(h.HandoverError.ReferralRefused) as err:
        run(b.referral_act(rid, h.ReferralAction.ACCEPT()))
    assert "PURGE_CONFIRMED" in str(err.value)

    # Callbacks arrive on library threads, never the caller's.
    main = threading.current_thread().name
    assert a_inbox.threads and main not in a_inbox.threads | b_inbox.threads | old_inbox.threads

    a.clear_message_listener()
    run(a.shutdown())
    run(b.shutdown())
    with pytest.raises(h.HandoverError.ProfileLocked):
        run(a.contacts())


def test_reopen_with_credential_and_wrong_credential(relay, tmp_path, clients):
    key = os.urandom(32)
    client = run(h.Client.create_organisation(
        str(tmp_path / "p"), h.Credential.KEYSTORE_KEY(key=key), None, relay.address, relay.pin,
        "laptop", "Org"))
    device = run(client.identity()).device_id
    del client  # no shutdown(): dropping the last reference must release the store
    with pytest.raises(h.HandoverError.WrongCredential):
        run(h.Client.open(str(tmp_path / "p"), h.Credential.KEYSTORE_KEY(key=bytes(32))))
    again = run(h.Client.open(str(tmp_path / "p"), h.Credential.KEYSTORE_KEY(key=key)))
    clients.append(again)
    assert run(again.has_identity()) and run(again.identity()).device_id == device


def test_duress_and_panic_wipe_through_the_client(relay, tmp_path, clients):
    path = str(tmp_path / "p")
    client = new_org(clients, relay, path, "Org", passphrase("real"))
    with pytest.raises(h.HandoverError.DuressMatchesCredential):
        run(client.set_duress_credential(passphrase("real")))
    run(client.set_duress_credential(passphrase("duress")))
    run(client.shutdown())
    decoy = run(h.Client.open(path, passphrase("duress")))
    clients.append(decoy)
    assert not run(decoy.has_identity())
    with pytest.raises(h.HandoverError.NoIdentity):
        run(decoy.identity())
    run(decoy.panic_wipe())
    with pytest.raises(h.HandoverError.ProfileNotFound):
        run(h.Client.open(path, passphrase("real")))


def test_enrol_a_second_device(relay, tmp_path, clients):
    admin = new_org(clients, relay, tmp_path / "admin", "Org", passphrase("pw"))
    pending = h.PendingDevice.generate()
    enrolment = run(admin.enrol_device(pending.public_keys(), h.Role.CASEWORKER, "Intake 2"))
    worker = run(h.Client.create_enrolled(
        str(tmp_path / "worker"), passphrase("pw2"), FAST_KDF, relay.address, relay.pin,
        pending, enrolment, "Intake 2"))
    clients.append(worker)
    me = run(worker.identity())
    assert me.device_id == pending.public_keys().device_id
    assert me.org_root == run(admin.identity()).org_root and me.role == h.Role.CASEWORKER
    assert not me.holds_org_key
    with pytest.raises(h.HandoverError.InvalidArgument) as err:
        run(h.Client.create_enrolled(
            str(tmp_path / "again"), passphrase("pw3"), FAST_KDF, relay.address, relay.pin,
            pending, enrolment, "Intake 2"))
    assert "already used" in str(err.value)
    with pytest.raises(h.HandoverError.NotPermitted):
        run(worker.enrol_device(h.PendingDevice.generate().public_keys(), h.Role.ADMIN, "x"))
    run(admin.revoke_device(me.device_id))


def test_errors_are_exceptions_with_clear_messages(relay, tmp_path, clients):
    with pytest.raises(h.HandoverError.RelayUnreachable):
        run(h.Client.create_organisation(str(tmp_path / "wrong-pin"), passphrase("pw"), FAST_KDF,
                                         relay.address, "00" * 32, "laptop", "Org"))
    with pytest.raises(h.HandoverError.InvalidArgument) as err:
        run(h.Client.create_organisation(str(tmp_path / "bad-pin"), passphrase("pw"), FAST_KDF,
                                         relay.address, "zz", "laptop", "Org"))
    assert "pin" in str(err.value)

    client = new_org(clients, relay, tmp_path / "ok", "Org", passphrase("pw"))
    with pytest.raises(h.HandoverError.InvalidInvitation) as err:
        run(client.accept_invitation("handover://invite#not-a-real-invitation"))
    assert "invitation is not valid" in str(err.value)
    with pytest.raises(h.HandoverError.InvalidInvitation):
        h.invitation_info("https://example.org/")

    with pytest.raises(h.HandoverError.NotFound) as err:
        run(client.referral("00" * 16))
    assert "referral" in str(err.value)
    with pytest.raises(h.HandoverError.NotFound):
        run(client.referral_act("00" * 16, h.ReferralAction.ACCEPT()))
    with pytest.raises(h.HandoverError.InvalidArgument) as err:
        run(client.referral("not hex"))
    assert "32 hex digits" in str(err.value)
    with pytest.raises(h.HandoverError.NotFound):
        run(client.export_consent_kantara("00" * 16))

    with pytest.raises(h.HandoverError.InvalidArgument) as err:
        run(client.record_consent(consent_draft("ab" * 32, ["NOT_A_SECTION"])))
    assert "SECTION_" in str(err.value) and "NOT_A_SECTION" not in str(err.value)

    # A child's consent records the child's assent, and who consented for the child.
    minor = consent_draft("ab" * 32)
    minor.principal_is_minor = True
    minor.expressed_by = "GUARDIAN"
    with pytest.raises(h.HandoverError.InvalidArgument) as err:
        run(client.record_consent(minor))
    assert "child_assent" in str(err.value)
    minor.child_assent = "NOT_APPLICABLE"
    with pytest.raises(h.HandoverError.InvalidArgument) as err:
        run(client.record_consent(minor))
    assert "minor_note" in str(err.value)
    minor.minor_note = "The child is 4 years old."
    run(client.record_consent(minor))

    # Trust is needed before accepting another organisation's invitation.
    other = new_org(clients, relay, tmp_path / "other", "Other", passphrase("pw"))
    invitation = run(other.create_invitation(600))
    with pytest.raises(h.HandoverError.UntrustedOrganisation):
        run(client.accept_invitation(invitation.link))


def connect(inviter, invitee):
    """Both organisations trust each other (fingerprints compared), `invitee` accepts an
    invitation of `inviter`, and `inviter` receives the contact card."""
    inviter_id, invitee_id = run(inviter.identity()), run(invitee.identity())
    run(inviter.trust_organisation(invitee_id.org_root))
    run(invitee.trust_organisation(inviter_id.org_root))
    invitation = run(inviter.create_invitation(600))
    assert run(invitee.accept_invitation(invitation.link)) == inviter_id.device_id
    got = run(inviter.sync())
    assert any(m.kind == h.MessageKind.CONTACT_CARD and m.peer == invitee_id.device_id
               for m in got)


def is_verified(client, peer):
    return next(c for c in run(client.contacts()) if c.device_id == peer).verified


def test_safety_numbers_agree_on_both_sides_and_differ_for_a_third_party(
        relay, tmp_path, clients):
    a = new_org(clients, relay, tmp_path / "a", "Harbour", passphrase("a"))
    b = new_org(clients, relay, tmp_path / "b", "Riverside", passphrase("b"))
    c = new_org(clients, relay, tmp_path / "c", "Lakeside", passphrase("c"))
    connect(a, b)
    connect(a, c)
    a_id, b_id, c_id = (run(x.identity()).device_id for x in (a, b, c))

    at_a, at_b = run(a.safety_number(b_id)), run(b.safety_number(a_id))
    assert at_a.digits == at_b.digits
    assert len(at_a.digits) == 60 and at_a.digits.isdigit()
    groups = at_a.grouped.split(" ")
    assert len(groups) == 12 and all(len(g) == 5 for g in groups)
    assert "".join(groups) == at_a.digits
    # Each screen shows its own QR code: its fingerprint first.
    assert len(at_a.qr_payload) == 65 and at_a.qr_payload != at_b.qr_payload

    # A third organisation's device has a different number with A, the same on both sides.
    with_c = run(a.safety_number(c_id))
    assert with_c.digits != at_a.digits
    assert run(c.safety_number(a_id)).digits == with_c.digits

    # B and C never met: no safety number; a malformed id is the app's mistake.
    with pytest.raises(h.HandoverError.NotFound):
        run(b.safety_number(c_id))
    with pytest.raises(h.HandoverError.InvalidArgument):
        run(b.safety_number("not a device id"))

    # Marking verified needs the contact's own number (as read out, in groups) or QR code.
    assert not is_verified(a, b_id)
    with pytest.raises(h.HandoverError.SafetyNumberMismatch):
        run(a.mark_contact_verified(b_id, with_c.grouped))
    assert not is_verified(a, b_id)
    run(a.mark_contact_verified(b_id, at_b.grouped))
    assert is_verified(a, b_id) and not is_verified(a, c_id)
    with pytest.raises(h.HandoverError.SafetyNumberMismatch):
        run(b.mark_contact_verified_by_qr(a_id, at_b.qr_payload))
    run(b.mark_contact_verified_by_qr(a_id, at_a.qr_payload))
    assert is_verified(b, a_id)
    run(a.clear_contact_verified(b_id))
    assert not is_verified(a, b_id)


def free_udp_address():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def details(name, services=()):
    return h.OrgProfileDetails(name=name, services=list(services), languages=["ar"],
                               regions=["Brussels"], description="Emergency accommodation")


def query(name="", services=()):
    return h.DirectoryQuery(name_contains=name, services=list(services), languages=[],
                            regions=[])


def test_directory_search_and_import_only_with_the_compared_fingerprint(tmp_path, clients):
    binary = relay_binary_or_skip()
    listen, data = free_udp_address(), tmp_path / "relay-data"
    relay = RelayProcess(binary, data, listen=listen)
    try:
        paths = {"harbour": tmp_path / "harbour", "riverside": tmp_path / "riverside"}
        harbour = new_org(clients, relay, paths["harbour"], "Harbour", passphrase("h"))
        riverside = new_org(clients, relay, paths["riverside"], "Riverside", passphrase("r"))
        h_id, r_id = run(harbour.identity()), run(riverside.identity())

        # The relay operator has not admitted the organisations: the directory is closed.
        with pytest.raises(h.HandoverError.RelayRefused) as err:
            run(harbour.publish_profile(details("Harbour Women's Centre")))
        assert "UNAUTHORISED" in str(err.value)

        # The operator admits both and restarts the relay (same data, same address).
        for client in (harbour, riverside):
            run(client.shutdown())
        relay.stop()
        relay = RelayProcess(binary, data, listen=listen,
                             extra=["--admit-org", h_id.org_root, "--admit-org", r_id.org_root])
        harbour = run(h.Client.open(str(paths["harbour"]), passphrase("h")))
        riverside = run(h.Client.open(str(paths["riverside"]), passphrase("r")))
        clients.extend([harbour, riverside])

        run(harbour.publish_profile(details("Harbour Women's Centre", ["SHELTER"])))
        found = run(riverside.search_directory(query(name="harbour")))
        assert [e.name for e in found] == ["Harbour Women's Centre"]
        entry = found[0]
        assert entry.org_root == h_id.org_root
        assert entry.org_fingerprint == h_id.org_fingerprint
        assert not entry.trusted and entry.intake_devices == 1
        assert entry.services == ["SHELTER"] and entry.regions == ["Brussels"]
        assert [e.name for e in run(riverside.search_directory(query(services=["SHELTER"])))] \
            == ["Harbour Women's Centre"]
        assert run(riverside.search_directory(query(services=["LEGAL"]))) == []

        # A fingerprint that is not Harbour's (here Riverside's own) trusts and imports nothing.
        with pytest.raises(h.HandoverError.FingerprintMismatch):
            run(riverside.import_profile(entry.profile, r_id.org_fingerprint))
        assert run(riverside.contacts()) == []
        with pytest.raises(h.HandoverError.UntrustedOrganisation):
            run(riverside.accept_invitation(run(harbour.create_invitation(600)).link))

        # The fingerprint as Harbour read it out imports its intake device.
        spoken = entry.org_fingerprint.replace(" ", "-")
        assert run(riverside.import_profile(entry.profile, spoken)) == [h_id.device_id]
        contact = next(c for c in run(riverside.contacts()) if c.device_id == h_id.device_id)
        assert contact.has_address and contact.org_root == h_id.org_root
        assert not contact.verified

        # Riverside writes without an invitation; Harbour trusts Riverside and receives it once.
        run(riverside.send_contact_card(h_id.device_id))
        run(riverside.send_text(h_id.device_id, "found you in the directory", []))
        run(harbour.trust_organisation(r_id.org_root))
        got = run(harbour.sync())
        assert [m.text for m in got if m.kind == h.MessageKind.CHAT] \
            == ["found you in the directory"]
        assert run(harbour.safety_number(r_id.device_id)).digits \
            == run(riverside.safety_number(h_id.device_id)).digits
    finally:
        relay.stop()
