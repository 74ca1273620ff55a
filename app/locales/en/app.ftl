# The caseworker's desk: English interface texts (the reference language).
# Words follow docs/REFERRALS.md and shared/DOMAIN.md.

skip-to-content = Skip to content
nav-label = Main
nav-home = Home
nav-chats = Chats
nav-contacts = Contacts
nav-referrals = Referrals
nav-consent = Consent
nav-organisation = Organisation
nav-settings = Settings
status-online = connected
status-offline = not connected
lock-button = Lock
back-home = Back to Home
cancel = Cancel

## Unlock and create
unlock-title = Unlock your profile
passphrase = Passphrase
passphrase-repeat = Repeat the passphrase
unlock-button = Unlock
unlock-hint = The app locks itself after a while without activity, and when you press Lock.
unlock-wrong = That passphrase does not open this profile. Check it and try again.
unlock-failed = The profile could not be opened: { $error }
locked-notice = Locked. Unlock to continue.
create-title = Create a profile
create-empty-store = This profile holds no identity yet. Create one: a new organisation with this device as its first admin.
create-name = Your name as contacts will see it
create-relay = Relay address (HOST:PORT)
create-pin = Relay certificate pin (64 hex characters)
create-token = Mailbox-creation token (only if the relay operator gave you one)
create-button = Create profile
create-mismatch = The two passphrases differ. Type the same passphrase twice.
create-empty = Fill in your name, the relay address, its pin and a passphrase.
create-bad-pin = The relay pin must be 64 hex characters: copy the pin= value of the relay's ready line.
create-exists = This directory already holds a profile: unlock it instead.
create-failed = Creating the profile failed: { $error }. Check that the relay is running and that its address and pin are right.

## Home
home-title = Home
home-needs-you = What needs you now
home-nothing = Nothing waits for you.
home-fingerprint = Your organisation's fingerprint: { $fingerprint } (read it out to contacts so they can verify you).
todo-untrusted = An organisation you do not trust yet has sent you messages: compare its fingerprint
todo-new-messages = { $count } new messages
todo-unverified = { $count } contacts not verified

## Chats
chats-title = Chats
chat-message = Message
chat-send = Send
chat-disappear = Disappearing message
disappear-off = Off
disappear-5m = After 5 minutes
disappear-1h = After 1 hour
disappear-1d = After 1 day
disappear-1w = After 1 week
disappears = disappears
chat-sent = Sent.
chat-queued = Saved in the outbox: the relay could not be reached. It is sent as soon as the connection is back.
chat-empty = The message is empty.
chat-revoked = This device was revoked by its organisation: nothing is sent to it.
chat-failed = Sending failed: { $error }

## Contacts
contacts-title = Contacts
contacts-none = No contacts yet. Exchange an invitation.
col-name = Name
col-org = Organisation fingerprint
col-role = Role
col-state = State
verified = verified
not-verified = not verified
revoked = revoked
no-address = no reply address yet
safety-changed = safety number changed
safety-changed-long = This contact's safety number changed: the device was re-installed or someone else holds its name. Compare the new safety number before sending case details.
verify-link = Safety number
invite-title = Invite a contact
invite-hours = Valid for (hours)
invite-button = Create invitation
invite-made = Give this invitation to one person. It is valid for { $hours } hours.
invite-link = Invitation link
invite-next = The other person accepts it in their app. Their reply arrives here by itself.
invite-failed = Creating the invitation failed: { $error }
accept-title = Accept an invitation
accept-link = Invitation link (starts with handover://invite#)
accept-button = Accept
accept-bad-link = This is not a valid invitation link. Copy the whole link, or scan the QR code again.
accept-done = Invitation from { $name } accepted. You can write to them now.
accept-failed = Accepting the invitation failed: { $error }. If it expired or was already used, ask for a new one.
trust-title = Compare the organisation's fingerprint
trust-explain = This invitation comes from an organisation you do not trust yet. Ask the person who invited you to read out their organisation's fingerprint, in person or by phone, and type it here. Accept only if it matches the fingerprint below.
trust-compared = The fingerprint as they read it out
trust-accept-button = Fingerprint matches: trust and accept
trust-mismatch = The fingerprint you typed does not match this organisation. Do not accept: ask them to read it again.
trust-waiting = An organisation you do not trust yet has sent you messages. Its fingerprint: { $fingerprint }. Compare it with them in person or by phone.
trust-button = Fingerprint matches: trust
trust-done = The organisation is now trusted; its messages are being fetched.
verify-title = Safety number with { $name }
verify-explain = Compare this number with the one on your contact's screen, in person or by phone (or scan their QR code). Both screens show the same twelve groups. If every group matches, type the number as they read it out.
verify-typed = The number as your contact reads it out
verify-button = Numbers match: mark verified
verify-clear = Forget that this contact is verified
verify-done = Marked verified.
verify-cleared = No longer marked verified.
verify-mismatch = The number you typed does not match the safety number: nothing was marked. Compare again group by group; if they still differ, send no case details to this contact.
verify-untrusted = This contact's organisation is not trusted on this device, so there is no safety number yet. Compare the organisation's fingerprint first.
verify-failed = The safety number could not be shown: { $error }

## Errors
error-locked = The app is locked.
error-not-found = There is no such page or item.
error-generic = Something went wrong: { $error }

## Roles
role-admin = admin
role-caseworker = caseworker
role-ambassador = ambassador
role-unknown = unknown

## Referrals
referrals-title = Referrals
referral-title = Referral
referrals-none = No referrals on this device.
filter-any = any
filter-side = Direction
filter-text = Case reference, service or organisation
filter-button = Filter
side-sent = sent by you
side-received = received
todo-offer = A referral offer waits for your decision (respond by { $respond_by })
todo-info-requested = The receiving organisation asks for more information
todo-release = Case details wait to be released
todo-erasure = Erasure not yet confirmed by every recipient
offer-title = Offer
body-title = Case details
body-sender = You hold the case details; they are released to the receiving organisation when it accepts.
body-erased = The case details were erased on this device.
body-coming = The case details are on their way: they appear here as soon as they arrive.
body-after-accept = The case details are released only after you accept.
body-none = No case details.
attachments = Attachments
actions-title = What you can do
act-accept = Accept
act-decline = Decline
act-reason = Reason
act-note = Note
act-questions = Questions (one per line)
act-request = Ask for information
act-answers = Answers (one per line)
act-provide = Send the information
act-start = Start service
act-outcome = Outcome
act-successful = Successful
act-not-successful = Not successful
act-reason-if-not = Reason (when not successful)
act-complete = Complete
act-withdraw-reason = Why you withdraw it
act-withdraw = Withdraw the referral
act-need-reason = Choose a reason.
act-need-text = Write the text first.
act-refused = That step was refused: { $error }
referral-acted = Done: the step was signed and sent.
timeline-title = Verified timeline
timeline-full = Every entry's hash, link and signature verified.
timeline-chain = Case content was erased: the hash chain verified.
timeline-bad = The timeline does not verify: { $error }
f-kind = Kind
f-priority = Priority
f-respond-by = Respond by
f-from = From
f-to = To
f-case-ref = Case reference
f-services = Services
f-purpose = Purpose
f-sections = Sections included
f-consent = Consent
f-languages = Languages
f-interpreter = Interpreter needed
f-age-band = Age band
f-minor = Minor
f-onward = Onward sharing allowed
f-retain-until = Keep until
f-offer-expires = Offer expires
yes = yes
no = no

## Consent
consent-title = Consent
consent-none = No consent receipts recorded on this device.
consent-receipt = Consent receipt
consent-principal = Person (pseudonymous reference)
consent-recorded = Recorded
consent-purposes = Purposes
consent-language = The person's copy in
consent-kantara = Download as Kantara Consent Receipt JSON
consent-print = Print this page for the person: only the receipt is printed.
consent-erasure = Erasure
consent-no-recipients = No data was shared under this consent.
consent-confirmed = Devices that confirmed erasure
consent-pending = Devices still to confirm
consent-withdraw-explain = If the person withdraws consent, every organisation that received data under it is asked to erase it and confirms erasure here.
consent-withdraw = Withdraw consent
consent-withdrawn = Consent withdrawn: erasure requests were sent to every recipient.
consent-recorded-notice = Consent recorded.

## Organisation
organisation-title = Organisation
org-fingerprint = Organisation fingerprint
org-key = Organisation key (for relay operators)
org-devices = Devices
org-this-device = this device
org-revoke = Revoke
org-cli-hint = Enrolling a new device and the directory are done with the command line for now: handover org enroll, handover org directory.
device-revoked = The device was revoked; the new device list was sent to your contacts.

## Settings
settings-title = Settings
settings-lock = Lock after this many minutes without activity
settings-save = Save
settings-saved = Saved.
settings-duress = Duress passphrase
settings-duress-explain = Unlocking with this passphrase destroys the real profile and opens an empty one that looks new.
settings-duress-set = Set the duress passphrase
settings-wipe = Panic wipe
settings-wipe-explain = Destroys this profile's keys at once and deletes its files. It cannot be undone.
settings-wipe-type = Type { $word } to confirm
settings-wipe-button = Wipe this profile now
wipe-word = WIPE
wipe-not-confirmed = Nothing was wiped: type the confirmation word exactly.
wiped = The profile was wiped.
