// JVM test of Handover's generated Kotlin bindings: the same flow an Android app runs, minus
// Android. Run by scripts/ffi-kotlin-test.sh, which compiles it with the generated
// uniffi/handover_ffi/handover_ffi.kt against JNA and kotlinx-coroutines.

import java.io.File
import java.nio.file.Files
import java.util.concurrent.LinkedBlockingQueue
import java.util.concurrent.TimeUnit
import kotlinx.coroutines.async
import kotlinx.coroutines.awaitAll
import kotlinx.coroutines.runBlocking
import uniffi.handover_ffi.*

val FAST_KDF = KdfSettings(memoryKib = 64u, iterations = 1u, parallelism = 1u)

var passed = 0
var failed = 0
var skipped = 0

fun check(condition: Boolean, what: String) {
    if (!condition) throw AssertionError(what)
}

inline fun <reified E : Throwable> expect(block: () -> Unit): E {
    try {
        block()
    } catch (e: Throwable) {
        if (e is E) return e
        throw AssertionError("expected ${E::class.simpleName}, got $e")
    }
    throw AssertionError("expected ${E::class.simpleName}, nothing was thrown")
}

fun test(name: String, body: () -> Unit) {
    try {
        body()
        passed++
        println("PASS $name")
    } catch (e: Throwable) {
        failed++
        println("FAIL $name: $e")
        e.printStackTrace()
    }
}

fun tempDir(): String = Files.createTempDirectory("handover-kt").toString()

/** A real relay process on loopback; the script passes the binary in HANDOVER_RELAY_BIN. */
class RelayProcess(binary: String) : AutoCloseable {
    private val process: Process
    val address: String
    val pin: String

    init {
        process = ProcessBuilder(
            binary, "--listen", "127.0.0.1:0", "--admin", "off",
            "--data-dir", tempDir(), "--wal-mib", "2",
        ).redirectError(ProcessBuilder.Redirect.DISCARD).start()
        val ready = process.inputStream.bufferedReader().lineSequence()
            .firstOrNull { it.startsWith("handover-relay ready") }
            ?: throw IllegalStateException("$binary exited without its ready line")
        val fields = ready.split(" ").mapNotNull {
            val kv = it.split("=", limit = 2)
            if (kv.size == 2) kv[0] to kv[1] else null
        }.toMap()
        address = fields.getValue("quic")
        pin = fields.getValue("pin")
    }

    override fun close() {
        process.destroyForcibly()
        process.waitFor(5, TimeUnit.SECONDS)
    }
}

class RecordingProgress : ProgressListener {
    val calls = mutableListOf<Pair<ULong, ULong>>()
    override fun onProgress(done: ULong, total: ULong) {
        synchronized(calls) { calls.add(done to total) }
    }
}

/** Collects what a client delivers; callbacks arrive on library threads. */
class Inbox : MessageListener {
    val items = LinkedBlockingQueue<Any>()
    val threads = java.util.Collections.synchronizedSet(mutableSetOf<String>())
    override fun onMessage(message: Message) {
        threads.add(Thread.currentThread().name)
        items.put(message)
    }
    override fun onEvent(event: ClientEvent) {
        threads.add(Thread.currentThread().name)
        items.put(event)
    }
    /** The first item matching [predicate]; an upper bound of 60 s so a broken build fails. */
    fun <T> waitFor(what: String, predicate: (Any) -> T?): T {
        val deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(60)
        while (true) {
            val left = deadline - System.nanoTime()
            if (left <= 0) throw AssertionError("the listener never received $what")
            val item = items.poll(left, TimeUnit.NANOSECONDS) ?: continue
            predicate(item)?.let { return it }
        }
    }
    fun waitReferral(what: String, predicate: (ReferralEvent) -> Boolean): ReferralEvent =
        waitFor(what) { item ->
            (item as? ClientEvent.Referral)?.event?.takeIf(predicate)
        }
}

const val PURPOSE = "Safe accommodation after leaving a violent home"
val SECTIONS = listOf("IDENTITY", "SAFE_CONTACT", "REASON", "RISK", "ATTACHMENTS")

fun consentDraft(bRoot: String) = ConsentDraft(
    principalRef = "P-7Q2X",
    expressedBy = "SURVIVOR",
    collectionMethod = "IN_PERSON_VERBAL",
    purposes = listOf(ConsentPurpose(purpose = PURPOSE, category = "referral", primary = true)),
    recipients = listOf(ConsentRecipient(bRoot, "Riverside Safe House", listOf("SHELTER"))),
    dataCategories = SECTIONS,
    legalBasis = "GDPR Art. 6(1)(a) and Art. 9(2)(a) explicit consent",
    controllers = listOf(ConsentController(name = "Harbour Women's Centre")),
    witnessCaseworkerId = "CW-12",
    witnessOrgName = "Harbour Women's Centre",
    principalAckMethod = "VERBAL_WITNESSED",
    withdrawalMethod = "Tell your caseworker, any time.",
    retentionSecs = 90uL * 86400uL,
    jurisdictions = listOf("BE"),
    noticeRef = "https://example.org/privacy/v3",
    noticeLanguage = "en",
)

fun referralDraft(aRoot: String, bRoot: String) = ReferralDraft(
    kind = "REFERRAL",
    senderCaseRef = "HWC-0193",
    fromParty = Party(aRoot, "Harbour Women's Centre", "Duty caseworker", Role.ADMIN, "Reply through Handover"),
    toParty = Party(orgRoot = bRoot, orgName = "Riverside Safe House"),
    servicesRequested = listOf("SHELTER"),
    priority = "URGENT",
    purpose = PURPOSE,
    ageBand = "ADULT",
    retainUntil = (System.currentTimeMillis() / 1000 + 60 * 86400).toULong(),
    retentionRule = "Erase 60 days after the offer",
    languages = listOf("ar"),
)

fun body(attachment: Attachment, extra: List<BodySection> = emptyList()) = listOf(
    BodySection.Identity(nameOrAlias = "Amina Haddad", preferredTerm = "survivor"),
    BodySection.SafeContact(safeToContact = true, codeWord = "bluebird"),
    BodySection.Reason(reason = "Left a violent partner two days ago."),
    BodySection.Risk(level = "HIGH"),
    BodySection.Attachments(attachments = listOf(attachment)),
) + extra

fun twoOrganisationsFlow(relay: RelayProcess) = runBlocking {
    val a = Client.createOrganisation(tempDir() + "/a", Credential.Passphrase("harbour"), FAST_KDF,
        relay.address, relay.pin, "A intake", "Harbour")
    val b = Client.createOrganisation(tempDir() + "/b", Credential.KeystoreKey(ByteArray(32) { 7 }), FAST_KDF,
        relay.address, relay.pin, "B intake", "Riverside")
    a.use { _ -> b.use { _ ->
        val aId = a.identity()
        val bId = b.identity()
        check(orgFingerprint(bId.orgRoot) == bId.orgFingerprint, "fingerprint")
        a.trustOrganisation(bId.orgRoot)
        b.trustOrganisation(aId.orgRoot)
        val aInbox = Inbox()
        val bInbox = Inbox()
        a.setMessageListener(aInbox)
        b.setMessageListener(bInbox)
        a.start()
        b.start()

        val invitation = a.createInvitation(3600uL)
        check(invitationInfo(invitation.link).orgRoot == aId.orgRoot, "invitation info")
        check(qrCode(invitation.qrPayload).svg.startsWith("<svg"), "qr svg")
        check(b.acceptInvitation(invitation.link) == aId.deviceId, "accept leads to A")
        aInbox.waitFor("B's contact card") { (it as? Message)?.takeIf { m -> m.peer == bId.deviceId } }

        b.sendText(aId.deviceId, "Can you take a referral tonight?", emptyList())
        val got = aInbox.waitFor("B's chat") { (it as? Message)?.takeIf { m -> m.kind == MessageKind.CHAT } }
        check(got.text == "Can you take a referral tonight?", "chat text at A: ${got.text}")
        a.sendText(bId.deviceId, "Yes, send it.", emptyList())
        val back = bInbox.waitFor("A's chat") { (it as? Message)?.takeIf { m -> m.kind == MessageKind.CHAT } }
        check(back.text == "Yes, send it.", "chat text at B")

        val receipt = a.recordConsent(consentDraft(bId.orgRoot))
        check(receipt.state == "GIVEN", "consent given")
        val document = "Letter from the GP.\n".repeat(20000).toByteArray()
        val up = RecordingProgress()
        val attachment = a.uploadAttachment(document, "text/plain", "letter.txt", up)
        check(up.calls.isNotEmpty() && up.calls.last().first == up.calls.last().second, "upload progress ${up.calls.lastOrNull()}")

        val refused = expect<HandoverException.ConsentRefused> {
            runBlocking {
                a.sendReferral(referralDraft(aId.orgRoot, bId.orgRoot),
                    body(attachment, listOf(BodySection.Location(location = "Room 4"))),
                    ReferralConsent.Receipt(receipt.receiptId))
            }
        }
        check(refused.message!!.contains("LOCATION"), "gate names the section: ${refused.message}")

        val rid = a.sendReferral(referralDraft(aId.orgRoot, bId.orgRoot), body(attachment),
            ReferralConsent.Receipt(receipt.receiptId))
        bInbox.waitReferral("the offer") { it is ReferralEvent.OfferReceived && it.referralId == rid }
        check(b.referral(rid).offer?.purpose == PURPOSE, "offer purpose at B")
        check(b.referralBody(rid).isEmpty(), "no body before accept")
        b.referralAct(rid, ReferralAction.Acknowledge)
        check(b.referralAct(rid, ReferralAction.Accept) == "ACCEPTED", "accepted")
        aInbox.waitReferral("the accept") { it is ReferralEvent.ReleaseBody && it.referralId == rid }
        check(a.releaseReferralBody(rid) == 1u, "body released to one device")
        bInbox.waitReferral("the body") { it is ReferralEvent.BodyReceived && it.referralId == rid }
        val sections = b.referralBody(rid)
        val identity = sections.filterIsInstance<BodySection.Identity>().single()
        check(identity.nameOrAlias == "Amina Haddad", "identity at B")
        val file = sections.filterIsInstance<BodySection.Attachments>().single().attachments.single()
        val down = RecordingProgress()
        check(b.downloadAttachment(file, down).contentEquals(document), "attachment round trip")
        check(down.calls.last() == document.size.toULong() to document.size.toULong(), "download progress")

        check(a.exportConsentKantara(receipt.receiptId).contains(receipt.receiptId), "kantara json")
        a.changeConsent(receipt.receiptId, ConsentChange.WITHDRAWN)
        bInbox.waitReferral("the erasure") { it is ReferralEvent.Erased && it.referralId == rid }
        aInbox.waitReferral("the purge confirmation") { it is ReferralEvent.PurgeConfirmed && it.referralId == rid }
        val report = a.purgeStatus(receipt.receiptId).single()
        check(report.confirmed == listOf(bId.deviceId) && report.pending.isEmpty(), "purge report $report")
        check(a.referral(rid).state == "PURGE_CONFIRMED", "purge confirmed at A")
        check(Thread.currentThread().name !in aInbox.threads, "callbacks on library threads")

        expect<HandoverException.NotFound> { runBlocking { a.referral("00".repeat(16)) } }
        expect<HandoverException.InvalidInvitation> { runBlocking { a.acceptInvitation("handover://invite#nope") } }
        a.shutdown()
        b.shutdown()
    } }
}

fun main() {
    println("handover-ffi ${version()}")
    val pass = Credential.Passphrase("correct horse")

    test("version names the protocol") { check(version().contains("protocol 1"), version()) }

    test("profile: create, settings, use {} releases, reopen") {
        val dir = tempDir() + "/profile"
        runBlocking {
            Profile.create(dir, pass, FAST_KDF).use { p ->
                check(p.isEmpty(), "new profile is empty")
                p.setSetting("theme", "dark".toByteArray())
            }
            // use {} destroyed the object: the store is released and can be opened again.
            Profile.open(dir, pass).use { p ->
                check(p.getSetting("theme")!!.contentEquals("dark".toByteArray()), "setting kept")
                check(p.getSetting("missing") == null, "missing setting is null")
            }
        }
    }

    test("profile: wrong passphrase, keystore key, key length") {
        val dir = tempDir() + "/profile"
        val key = ByteArray(32) { it.toByte() }
        runBlocking {
            Profile.create(dir, Credential.KeystoreKey(key), null).use { it.lock() }
            val e = expect<HandoverException.WrongCredential> {
                runBlocking { Profile.open(dir, Credential.KeystoreKey(ByteArray(32))) }
            }
            check(e.message!!.contains("wrong passphrase or key"), "message: ${e.message}")
            expect<HandoverException.InvalidArgument> {
                runBlocking { Profile.open(dir, Credential.KeystoreKey(ByteArray(5))) }
            }
            Profile.open(dir, Credential.KeystoreKey(key)).close()
        }
    }

    test("profile: duress passphrase destroys the real profile") {
        val dir = tempDir() + "/profile"
        runBlocking {
            Profile.create(dir, pass, FAST_KDF).use { p ->
                p.setSetting("case", "sensitive".toByteArray())
                expect<HandoverException.DuressMatchesCredential> {
                    runBlocking { p.setDuressPassphrase("correct horse") }
                }
                p.setDuressPassphrase("duress")
            }
            Profile.open(dir, Credential.Passphrase("duress")).use { decoy ->
                check(decoy.isEmpty(), "duress profile is empty")
            }
            expect<HandoverException.WrongCredential> { runBlocking { Profile.open(dir, pass) } }
        }
    }

    test("profile: panic wipe") {
        val dir = tempDir() + "/profile"
        runBlocking {
            val p = Profile.create(dir, pass, FAST_KDF)
            p.setSetting("case", "sensitive".toByteArray())
            p.panicWipe()
            check(!p.isOpen(), "wiped profile is closed")
            expect<HandoverException.ProfileLocked> { runBlocking { p.getSetting("case") } }
            p.close() // AutoCloseable: destroys the Rust object
            expect<HandoverException.ProfileNotFound> { runBlocking { Profile.open(dir, pass) } }
        }
    }

    val relayBin = System.getenv("HANDOVER_RELAY_BIN")
    if (relayBin.isNullOrEmpty()) {
        skipped += 4
        println("SKIP relay tests: no relay binary (HANDOVER_RELAY_BIN is not set)")
    } else {
        RelayProcess(relayBin).use { relay ->
            test("relay: connect, ping, latency check with a Kotlin progress listener") {
                runBlocking {
                    Relay.connect(relay.address, relay.pin).use { conn ->
                        check(conn.ping() > 1_700_000_000uL, "relay clock")
                        val progress = RecordingProgress()
                        val report = conn.checkLatency(4u, progress)
                        check(report.pings == 4u, "pings")
                        check(progress.calls == (1..4).map { it.toULong() to 4uL }, "${progress.calls}")
                        check(report.minMs <= report.maxMs, "min <= max")
                        conn.disconnect()
                        check(conn.isClosed(), "closed")
                    }
                }
            }
            test("relay: concurrent pings from coroutines") {
                runBlocking {
                    Relay.connect(relay.address, relay.pin).use { conn ->
                        val times = (1..10).map { async { conn.ping() } }.awaitAll()
                        check(times.size == 10, "answers")
                    }
                }
            }
            test("client: two organisations, chat, referral, consent withdrawal, purge") {
                twoOrganisationsFlow(relay)
            }
            test("relay: wrong pin is refused") {
                expect<HandoverException.RelayUnreachable> {
                    runBlocking { Relay.connect(relay.address, "00".repeat(32)) }
                }
            }
        }
    }

    println("kotlin: $passed passed, $failed failed, $skipped skipped")
    if (failed > 0) kotlin.system.exitProcess(1)
}
