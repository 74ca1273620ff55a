// JVM test of Handover's generated Kotlin bindings: the same flow an Android app runs, minus
// Android. Run by scripts/ffi-kotlin-test.sh, which compiles it with the generated
// uniffi/handover_ffi/handover_ffi.kt against JNA and kotlinx-coroutines.

import java.io.File
import java.nio.file.Files
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
        skipped += 3
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
