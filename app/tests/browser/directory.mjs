// The organisation directory in headless Chromium (tests/tests/app_browser.rs): two apps on
// profiles built through the client core, on a relay that admits both organisations. Riverside
// publishes its profile from the Organisation page; Harbour searches by service (by keyboard),
// compares Riverside's fingerprint as Riverside's own Organisation page shows it (a wrong one is
// refused at the field), imports, and Riverside's intake device appears in Harbour's contacts;
// Harbour's contact card reaches Riverside, which is asked to compare Harbour's fingerprint.
// Prints "N passed, N failed" and exits non-zero on any failure.
import { config, WAIT, check, shot, run } from "./harness.mjs";

const NAME = "Riverside Women's Shelter";

async function unlock(page, origin) {
  await page.goto(`${origin}/unlock`);
  await page.fill("#passphrase", config.passphrase);
  await Promise.all([page.waitForURL(`${origin}/`), page.click("button[type=submit]")]);
}

await run("directory", async ({ step, page, noCspViolations }) => {
  const a = await page("Harbour");
  const b = await page("Riverside");
  const A = config.a;
  const B = config.b;
  await a.goto(A.launch);
  await b.goto(B.launch);
  await unlock(a, A.origin);
  await unlock(b, B.origin);

  let riversideFingerprint = "";
  await step("Riverside publishes its profile from the Organisation page", async () => {
    await b.goto(`${B.origin}/organisation`);
    riversideFingerprint = (await b.textContent("#org-fingerprint")).trim();
    check(riversideFingerprint.length > 0, "no fingerprint on the Organisation page");
    await Promise.all([b.waitForURL(`${B.origin}/directory`), b.click("#directory-link")]);
    await Promise.all([b.waitForURL(`${B.origin}/directory/publish`), b.click("#publish-link")]);
    check((await b.textContent("#published")).includes("no profile in the directory yet"),
      "an unpublished organisation is not told so");
    // A missing name is refused next to the field.
    await b.click("#publish-button");
    await b.waitForSelector("#err-name");
    check((await b.getAttribute("#name", "aria-invalid")) === "true", "name not marked invalid");
    await b.fill("#name", NAME);
    await b.check('#services input[value="shelter"]');
    await b.check('#services input[value="legal"]');
    await b.fill("#languages", "ar, fr");
    await b.fill("#regions", "Brussels");
    await b.fill("#description", "Emergency accommodation, 24 hours.");
    await Promise.all([b.waitForURL(/\/directory\/publish\?/), b.click("#publish-button")]);
    const published = await b.textContent("#published");
    for (const shown of [NAME, "shelter, legal", "ar, fr", "Brussels", riversideFingerprint]) {
      check(published.includes(shown), `published profile lacks ${shown}: ${published}`);
    }
    check((await b.textContent(".notice")).includes("Published"), "no published notice");
    await shot(b, "directory-01-published");
  });

  await step("Harbour searches the directory by service, by keyboard", async () => {
    await a.click('nav a[href="/directory"]');
    await a.waitForURL(`${A.origin}/directory`);
    await a.focus("#name");
    await a.keyboard.press("Tab");
    check(await a.evaluate(() => document.activeElement.id === "service"), "Tab does not reach the service");
    await a.selectOption("#service", "shelter");
    await a.focus("#search");
    await Promise.all([a.waitForURL(/\/directory\?/), a.keyboard.press("Enter")]);
    const results = await a.textContent("#results");
    check(results.includes(NAME), `Riverside not found: ${results}`);
    check(results.includes(riversideFingerprint), "the fingerprint is not shown");
    check(results.includes("Emergency accommodation"), "the description is not shown");
    await shot(a, "directory-02-search");
  });

  await step("Harbour compares the fingerprint: a wrong one is refused, the right one imports", async () => {
    const entry = a.locator("article.entry", { hasText: NAME });
    await Promise.all([a.waitForURL(`${A.origin}/directory/import`), entry.locator("button[type=submit]").click()]);
    check((await a.textContent("#their-fingerprint")).trim() === riversideFingerprint,
      "the step shows another fingerprint");
    await a.fill("#fingerprint", "00000 00000 00000 00000 00000 00000");
    await a.click("#import-button");
    await a.waitForSelector("#err-fingerprint");
    check((await a.textContent("#err-fingerprint")).includes("does not match"), "mismatch not explained");
    await shot(a, "directory-03-mismatch");
    await a.fill("#fingerprint", riversideFingerprint);
    await Promise.all([a.waitForURL(/\/contacts\?notice=org-imported$/), a.click("#import-button")]);
    const list = await a.textContent("#contact-list");
    check(list.includes(NAME), `Riverside's intake device is not a contact: ${list}`);
    await shot(a, "directory-04-imported");
    await a.goto(`${A.origin}/directory?search=1&service=shelter`);
    check((await a.textContent("#results")).includes("imported: its intake devices are in your contacts"),
      "an imported organisation does not say so");
  });

  await step("Harbour's contact card reaches Riverside, which is asked to compare Harbour", async () => {
    await b.goto(`${B.origin}/contacts`);
    await b.waitForFunction(
      (fp) => document.querySelector("#pending-orgs").textContent.includes(fp),
      config.harbour_fingerprint,
      { timeout: WAIT },
    );
  });

  await noCspViolations();
});
