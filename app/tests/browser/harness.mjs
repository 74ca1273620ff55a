// What the browser scripts run by tests/tests/app_browser.rs share: their configuration (the
// JSON file named by HANDOVER_BROWSER_CONFIG), numbered steps that print "ok" or "FAIL" and, on a
// failure, each open page's address, text, field errors and a screenshot; pages that record
// Content-Security-Policy violations; and the summary line "N passed, N failed" with the exit
// code (non-zero on any failure, or when no step ran).
import { readFileSync } from "node:fs";
import { chromium } from "playwright-core";

export const config = JSON.parse(readFileSync(process.env.HANDOVER_BROWSER_CONFIG, "utf8"));
/** How long a step waits for something to appear (ms). */
export const WAIT = 20000;
const shots = process.env.HANDOVER_SCREENSHOTS;

export function check(condition, what) {
  if (!condition) throw new Error(what);
}

export async function shot(page, name) {
  await page.screenshot({ path: `${shots}/${name}.png`, fullPage: true });
}

/**
 * Runs `script({ step, page, noCspViolations })` in headless Chromium, prints the summary and
 * exits. `page(label)` opens a page in a browser context of its own (its own cookies: one per
 * app); `step(name, body)` runs one step and stops the script at the first failure;
 * `noCspViolations()` is the closing step that fails if any page reported a CSP violation.
 * Failure screenshots are named `failure-NAME-LABEL`.
 */
export async function run(name, script) {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM,
    headless: true,
    args: ["--no-sandbox", "--disable-dev-shm-usage"],
  });
  let passed = 0;
  let failed = 0;
  const openPages = [];
  const cspViolations = [];
  let reported = null;

  async function step(title, body) {
    try {
      await body();
      passed += 1;
      console.log(`ok   ${title}`);
    } catch (e) {
      failed += 1;
      console.log(`FAIL ${title}: ${e && e.stack ? e.stack : e}`);
      for (const [label, p] of openPages) {
        try {
          const text = (await p.textContent("body")).replace(/\s+/g, " ").slice(0, 600);
          console.log(`  ${label} at ${p.url()}: ${text}`);
          for (const err of await p.locator(".field-error").allTextContents()) {
            console.log(`  ${label} field error: ${err}`);
          }
          await shot(p, `failure-${name}-${label}`);
        } catch (err) {
          console.log(`  ${label}: ${err}`);
        }
      }
      reported = e;
      throw e;
    }
  }

  async function page(label) {
    const context = await browser.newContext({ viewport: { width: 1200, height: 900 } });
    const p = await context.newPage();
    p.on("console", (m) => {
      if (/Content Security Policy/i.test(m.text())) cspViolations.push(`${label}: ${m.text()}`);
    });
    openPages.push([label, p]);
    return p;
  }

  async function noCspViolations() {
    await step("no Content-Security-Policy violations on any page", async () => {
      check(cspViolations.length === 0, cspViolations.join("\n"));
    });
  }

  try {
    await script({ step, page, noCspViolations });
  } catch (e) {
    // A failed step was counted and reported by step(); anything else is a failure too.
    if (e !== reported) {
      failed += 1;
      console.log(`FAIL outside a step: ${e && e.stack ? e.stack : e}`);
    }
  } finally {
    await browser.close();
  }
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(failed === 0 && passed > 0 ? 0 : 1);
}
