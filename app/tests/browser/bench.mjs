// Benchmark (not a test): a message sent in one browser appears in the other through the
// relay. Sends N messages one after another from A's chat page and measures, with the one
// clock of this machine, from the moment the send button is pressed to the moment the message
// is in B's open page (live update, no reload). Prints p50, p99 and the mean in ms.
// Run by `cargo bench -p handover-app --bench browser_latency`.
import { readFileSync } from "node:fs";
import { chromium } from "playwright-core";

const config = JSON.parse(readFileSync(process.env.HANDOVER_BROWSER_CONFIG, "utf8"));
const N = Number(process.env.HANDOVER_BENCH_MESSAGES || "200");
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM,
  headless: true,
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});
try {
  const a = await (await browser.newContext()).newPage();
  const b = await (await browser.newContext()).newPage();
  const A = config.a;
  const B = config.b;
  await a.goto(A.launch);
  await b.goto(B.launch);
  for (const [page, origin, name] of [[a, A.origin, "Harbour"], [b, B.origin, "Riverside"]]) {
    await page.goto(`${origin}/create`);
    await page.fill("#name", name);
    await page.fill("#relay", config.relay);
    await page.fill("#pin", config.pin);
    await page.fill("#passphrase", config.passphrase);
    await page.fill("#passphrase2", config.passphrase);
    await Promise.all([page.waitForURL(`${origin}/`), page.click("main button[type=submit]")]);
  }
  const fingerprint = async (page, origin) => {
    await page.goto(`${origin}/organisation`);
    return (await page.textContent("#org-fingerprint")).trim();
  };
  const fpA = await fingerprint(a, A.origin);
  const fpB = await fingerprint(b, B.origin);
  await a.goto(`${A.origin}/contacts`);
  await Promise.all([a.waitForURL(/invite/), a.click("#invite")]);
  const link = (await a.inputValue("#invite-link")).trim();
  await b.goto(`${B.origin}/contacts`);
  await b.fill("#link", link);
  await b.click("#accept");
  await b.fill("#fingerprint", fpA);
  await Promise.all([b.waitForURL(/\/chats\//), b.click("main button[type=submit]")]);
  const chatB = new URL(b.url()).pathname;
  await a.goto(`${A.origin}/contacts`);
  await a.waitForSelector("#pending-orgs form", { timeout: 20000 });
  await a.fill("#pending-orgs input[name=fingerprint]", fpB);
  await Promise.all([a.waitForURL(/trust-done/), a.click("#pending-orgs button")]);
  await a.waitForSelector("#contact-list a[href^='/chats/']", { timeout: 20000 });
  const chatA = await a.getAttribute("#contact-list a[href^='/chats/']", "href");
  await a.goto(`${A.origin}${chatA}`);
  await b.goto(`${B.origin}${chatB}`);
  // B's page notes when each message appears.
  await b.evaluate(() => {
    window.__seen = {};
    new MutationObserver(() => {
      for (const li of document.querySelectorAll("#messages li.in .text")) {
        const t = li.textContent;
        if (!(t in window.__seen)) window.__seen[t] = Date.now();
      }
    }).observe(document.body, { childList: true, subtree: true, characterData: true });
  });
  const latencies = [];
  for (let i = 0; i < N; i++) {
    const text = `bench message ${i}`;
    await a.fill("#text", text);
    const sent = Date.now();
    await a.click("#send button");
    await b.waitForFunction((t) => t in window.__seen, text, { timeout: 20000, polling: 5 });
    const seen = await b.evaluate((t) => window.__seen[t], text);
    latencies.push(seen - sent);
    await a.waitForURL(/\/chats\//);
  }
  latencies.sort((x, y) => x - y);
  const q = (p) => latencies[Math.min(latencies.length - 1, Math.ceil(p * latencies.length) - 1)];
  const mean = latencies.reduce((s, x) => s + x, 0) / latencies.length;
  console.log(`browser-to-browser message latency over ${N} messages: p50 ${q(0.5)} ms, p99 ${q(0.99)} ms, mean ${mean.toFixed(1)} ms, max ${latencies[latencies.length - 1]} ms`);
} finally {
  await browser.close();
}
