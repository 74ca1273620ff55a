// The two-organisation story in headless Chromium, through two `handover app` instances and a
// relay (started by app/tests/browser.rs). Prints "N passed, N failed" and exits non-zero on
// any failure. Screenshots of each main screen go to $HANDOVER_SCREENSHOTS.
import { readFileSync } from "node:fs";
import { chromium } from "playwright-core";

const config = JSON.parse(readFileSync(process.env.HANDOVER_BROWSER_CONFIG, "utf8"));
const shots = process.env.HANDOVER_SCREENSHOTS;
const WAIT = 20000;
let passed = 0;
let failed = 0;
const openPages = [];

async function step(name, body) {
  try {
    await body();
    passed += 1;
    console.log(`ok   ${name}`);
  } catch (e) {
    failed += 1;
    console.log(`FAIL ${name}: ${e && e.stack ? e.stack : e}`);
    for (const [label, p] of openPages) {
      try {
        const text = (await p.textContent("body")).replace(/\s+/g, " ").slice(0, 600);
        console.log(`  ${label} at ${p.url()}: ${text}`);
        await p.reload();
        const again = (await p.textContent("main")).replace(/\s+/g, " ").slice(0, 400);
        console.log(`  ${label} after a reload: ${again}`);
        await shot(p, `failure-${label}`);
      } catch (err) {
        console.log(`  ${label}: ${err}`);
      }
    }
    throw e;
  }
}

function check(condition, what) {
  if (!condition) throw new Error(what);
}

async function shot(page, name) {
  await page.screenshot({ path: `${shots}/${name}.png`, fullPage: true });
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM,
  headless: true,
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});

try {
  // One browser context per organisation: each holds its own app's cookie.
  const ctxA = await browser.newContext({ viewport: { width: 1200, height: 900 } });
  const ctxB = await browser.newContext({ viewport: { width: 1200, height: 900 } });
  const a = await ctxA.newPage();
  const b = await ctxB.newPage();
  openPages.push(["A", a], ["B", b]);
  const cspViolations = [];
  for (const p of [a, b]) {
    p.on("console", (m) => {
      if (/Content Security Policy/i.test(m.text())) cspViolations.push(m.text());
    });
  }
  const A = config.a;
  const B = config.b;

  await step("launch: the one-time address lets the browser in and drops the secret", async () => {
    const response = await a.goto(A.launch);
    check(response.ok(), `status ${response.status()}`);
    check(!a.url().includes("k="), `secret still in the address: ${a.url()}`);
    await b.goto(B.launch);
    check(!b.url().includes("k="), "secret still in B's address");
    const headers = (await a.request.get(`${A.origin}/create`)).headers();
    check(headers["content-security-policy"].includes("script-src 'self'"), "no CSP");
  });

  async function create(page, origin, name) {
    await page.goto(`${origin}/create`);
    await page.fill("#name", name);
    await page.fill("#relay", config.relay);
    await page.fill("#pin", config.pin);
    await page.fill("#passphrase", config.passphrase);
    await page.fill("#passphrase2", config.passphrase);
    await Promise.all([page.waitForURL(`${origin}/`), page.click("button[type=submit]")]);
  }

  await step("create: each organisation creates its profile", async () => {
    await a.goto(`${A.origin}/create`);
    await shot(a, "01-create");
    await create(a, A.origin, "Harbour caseworker");
    await create(b, B.origin, "Riverside intake");
    check((await a.textContent("header")).includes("Harbour caseworker"), "A's name missing");
    await shot(a, "02-home");
  });

  let invitation = "";
  await step("invite: A makes an invitation with a link and a QR code", async () => {
    await a.goto(`${A.origin}/contacts`);
    await Promise.all([a.waitForURL(`${A.origin}/contacts/invite`), a.click("#invite")]);
    invitation = (await a.inputValue("#invite-link")).trim();
    check(invitation.startsWith("handover://invite#"), `link ${invitation}`);
    check((await a.locator(".qr svg").count()) === 1, "no QR code");
    await shot(a, "03-invite");
  });

  const fingerprint = async (page, origin) => {
    await page.goto(`${origin}/organisation`);
    return (await page.textContent("#org-fingerprint")).trim();
  };
  const fpA = await fingerprint(a, A.origin);
  const fpB = await fingerprint(b, B.origin);

  await step("accept: B is asked for A's fingerprint; a wrong one is refused", async () => {
    await b.goto(`${B.origin}/contacts`);
    await b.fill("#link", invitation);
    await b.click("#accept");
    await b.waitForSelector("#their-fingerprint");
    check((await b.textContent("#their-fingerprint")).trim() === fpA, "B shows another fingerprint");
    await b.fill("#fingerprint", "0000 0000 0000");
    await b.click("main button[type=submit]");
    await b.waitForSelector(".error");
    check((await b.textContent(".error")).includes("does not match"), "mismatch not explained");
    await shot(b, "04-fingerprint-step");
    await b.fill("#fingerprint", fpA);
    await Promise.all([b.waitForURL(/\/chats\/[0-9a-f]+$/), b.click("main button[type=submit]")]);
  });

  await step("trust: A sees B's organisation waiting, live, and trusts it after comparing", async () => {
    await a.goto(`${A.origin}/contacts`);
    await a.waitForSelector("#pending-orgs form", { timeout: WAIT });
    const text = await a.textContent("#pending-orgs");
    check(text.includes(fpB), "A does not show B's fingerprint");
    await a.fill("#pending-orgs input[name=fingerprint]", fpB);
    await Promise.all([a.waitForURL(/notice=trust-done/), a.click("#pending-orgs button")]);
    await a.waitForSelector("#contact-list a[href^='/chats/']", { timeout: WAIT });
    await shot(a, "05-contacts");
  });

  let chatA = "";
  let chatB = "";
  await step("safety numbers: both sides show the same number and mark each other verified", async () => {
    chatA = await a.getAttribute("#contact-list a[href^='/chats/']", "href");
    chatB = new URL(b.url()).pathname;
    const peerA = chatA.split("/").pop();
    const peerB = chatB.split("/").pop();
    await a.goto(`${A.origin}/contacts/${peerA}/verify`);
    await b.goto(`${B.origin}/contacts/${peerB}/verify`);
    const numA = (await a.textContent("#safety-number")).replace(/\s+/g, " ").trim();
    const numB = (await b.textContent("#safety-number")).replace(/\s+/g, " ").trim();
    check(numA.replace(/ /g, "").length === 60, `A's number ${numA}`);
    check(numA === numB, `numbers differ: ${numA} / ${numB}`);
    check((await a.locator(".qr svg").count()) === 1, "no safety QR");
    await shot(a, "06-safety-number");
    await a.fill("#number", "1".repeat(60));
    await a.click("form.card button");
    await a.waitForSelector(".error");
    await a.fill("#number", numB);
    await Promise.all([a.waitForURL(/notice=verify-done/), a.click("form.card button")]);
    check((await a.textContent("main")).includes("verified"), "A not verified");
    await b.fill("#number", numA);
    await Promise.all([b.waitForURL(/notice=verify-done/), b.click("form.card button")]);
  });

  await step("chat: messages arrive live both ways, without a reload", async () => {
    await a.goto(`${A.origin}${chatA}`);
    await b.goto(`${B.origin}${chatB}`);
    await a.evaluate(() => { window.__noReload = true; });
    await b.fill("#text", "Hello from Riverside");
    await b.click("#send button");
    await a.waitForSelector("#messages li.in >> text=Hello from Riverside", { timeout: WAIT });
    check(await a.evaluate(() => window.__noReload === true), "A's page was reloaded");
    await b.evaluate(() => { window.__noReload = true; });
    await a.fill("#text", "Hello Riverside, Harbour here");
    await a.press("#text", "Enter");
    await b.waitForSelector("#messages li.in >> text=Hello Riverside, Harbour here", { timeout: WAIT });
    check(await b.evaluate(() => window.__noReload === true), "B's page was reloaded");
    await shot(a, "07-chat");
  });

  await step("another origin's page cannot act on the app", async () => {
    const evil = await ctxA.newPage();
    await evil.goto("about:blank");
    await evil.evaluate(async (origin) => {
      try { await fetch(`${origin}/lock`, { method: "POST", mode: "no-cors", credentials: "include" }); } catch (e) {}
    }, A.origin);
    await evil.close();
    const r = await a.goto(`${A.origin}/`);
    check(new URL(a.url()).pathname === "/", `A was locked by another page: ${a.url()} ${r.status()}`);
  });

  await step("pages of other screens render", async () => {
    for (const [path, name] of [["/referrals", "08-referrals"], ["/consent", "09-consent"], ["/settings", "10-settings"]]) {
      const r = await a.goto(`${A.origin}${path}`);
      check(r.ok(), `${path}: ${r.status()}`);
      await shot(a, name);
    }
  });

  await step("lock clears the page; a wrong passphrase is refused; the right one unlocks", async () => {
    await a.goto(`${A.origin}${chatA}`);
    const other = await ctxA.newPage();
    await other.goto(`${A.origin}/contacts`);
    await a.click("#lock");
    await a.waitForURL(/\/unlock/);
    // The other open page of A follows by itself (live "locked" event).
    await other.waitForURL(/\/unlock/, { timeout: WAIT });
    const body = await a.textContent("body");
    check(!body.includes("Hello from Riverside") && !body.includes("Harbour caseworker"), "case content on the locked page");
    await a.goBack();
    check(!(await a.textContent("body")).includes("Hello from Riverside"), "history shows content after lock");
    await a.goto(`${A.origin}/unlock`);
    await a.fill("#passphrase", "not the passphrase");
    await a.click("button[type=submit]");
    await a.waitForSelector(".error");
    check((await a.textContent(".error")).includes("does not open"), "wrong passphrase not explained");
    await shot(a, "11-wrong-passphrase");
    await a.fill("#passphrase", config.passphrase);
    await Promise.all([a.waitForURL(`${A.origin}/`), a.click("button[type=submit]")]);
    await other.close();
  });

  await step("no Content-Security-Policy violations on any page", async () => {
    check(cspViolations.length === 0, cspViolations.join("\n"));
  });
} catch (e) {
  // Counted in step(); the summary below reports it.
} finally {
  await browser.close();
}

console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 && passed > 0 ? 0 : 1);
