// Benchmark (not a test): the referral list of a profile with many referrals (built by
// app/benches/referral_list.rs). Unlocks the app, checks the list counts every referral and
// shows the first page of 100, then navigates to /referrals N times and to a filtered, ordered
// later page N times, and reads the browser's Navigation Timing for each: from the
// navigation's start to the load event (the whole page: request, server, transfer, parse,
// style, layout), and the server's part (request sent to the last byte of the response).
// Prints p50, p99, mean and max in ms. Run by `cargo bench -p handover-app --bench referral_list`.
import { readFileSync } from "node:fs";
import { chromium } from "playwright-core";

const config = JSON.parse(readFileSync(process.env.HANDOVER_BROWSER_CONFIG, "utf8"));
const N = Number(process.env.HANDOVER_BENCH_LOADS || "30");
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM,
  headless: true,
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});
try {
  const page = await (await browser.newContext({ viewport: { width: 1200, height: 900 } })).newPage();
  await page.goto(config.launch);
  await page.goto(`${config.origin}/unlock`);
  await page.fill("#passphrase", config.passphrase);
  await Promise.all([page.waitForURL(`${config.origin}/`), page.click("button[type=submit]")]);
  const rows = async () => page.locator("td a[href^='/referrals/']").count();
  const total = async () => Number(await page.locator("#referral-list").getAttribute("data-total"));
  await page.goto(`${config.origin}/referrals`);
  const listed = await total();
  if (listed !== config.count) throw new Error(`the list counts ${listed} of ${config.count} referrals`);
  const shown = await rows();
  if (shown !== Math.min(config.count, 100)) throw new Error(`the first page shows ${shown} rows`);
  // Filtered and ordered: the text filter, most urgent first, a later page.
  const filtered = `${config.origin}/referrals?q=hwc-0&sort=urgent&page=3`;
  await page.goto(filtered);
  if ((await rows()) === 0) throw new Error("the filtered page shows no rows");
  const timed = async (url) => {
    const load = [];
    const server = [];
    for (let i = 0; i < N; i++) {
      await page.goto(url, { waitUntil: "load" });
      const t = await page.evaluate(() => {
        const n = performance.getEntriesByType("navigation")[0];
        return { load: n.loadEventEnd - n.startTime, server: n.responseEnd - n.requestStart };
      });
      load.push(t.load);
      server.push(t.server);
    }
    return { load, server };
  };
  const first = await timed(`${config.origin}/referrals`);
  const other = await timed(filtered);
  const summary = (xs) => {
    xs.sort((x, y) => x - y);
    const q = (p) => xs[Math.min(xs.length - 1, Math.ceil(p * xs.length) - 1)];
    const mean = xs.reduce((s, x) => s + x, 0) / xs.length;
    return `p50 ${q(0.5).toFixed(0)} ms, p99 ${q(0.99).toFixed(0)} ms, mean ${mean.toFixed(1)} ms, max ${xs[xs.length - 1].toFixed(0)} ms`;
  };
  console.log(`referral list with ${listed} referrals, first page (${shown} rows), ${N} loads: navigation start to load event ${summary(first.load)}`);
  console.log(`  of which request sent to last response byte: ${summary(first.server)}`);
  console.log(`filtered (q=hwc-0, most urgent first, page 3), ${N} loads: navigation start to load event ${summary(other.load)}`);
  console.log(`  of which request sent to last response byte: ${summary(other.server)}`);
} finally {
  await browser.close();
}
