// The refusals in headless Chromium, after the two-organisation story (tests/tests/app_browser.rs):
// two apps on profiles built through the client core, where Harbour's offer to Riverside has
// expired. An expired offer shows EXPIRED on both sides with none of its actions; Riverside's
// duress passphrase opens an empty store (the create screen) and its real passphrase no longer
// opens anything; Harbour's panic wipe refuses anything but the exact confirmation word, then
// wipes. Prints "N passed, N failed" and exits non-zero on any failure.
import { config, WAIT, check, shot, run } from "./harness.mjs";

const DURESS = "the river is high tonight";

async function unlock(page, origin, passphrase) {
  await page.goto(`${origin}/unlock`);
  await page.fill("#passphrase", passphrase);
  await page.click("button[type=submit]");
  await page.waitForLoadState("load");
}

await run("refusals", async ({ step, page, noCspViolations }) => {
  const a = await page("A");
  const b = await page("B");
  const A = config.a;
  const B = config.b;
  await a.goto(A.launch);
  await b.goto(B.launch);

  await step("an expired offer shows EXPIRED on both sides and none of its actions", async () => {
    for (const [page, origin, label] of [[a, A.origin, "sender"], [b, B.origin, "receiver"]]) {
      await unlock(page, origin, config.passphrase);
      check(page.url() === `${origin}/`, `${label} not unlocked: ${page.url()}`);
      // The expiry runs when the client catches up with the relay after unlocking.
      const url = `${origin}/referrals/${config.referral}`;
      const deadline = Date.now() + WAIT;
      let state = "";
      for (;;) {
        await page.goto(url);
        state = (await page.textContent("#referral-state")).trim();
        if (state === "EXPIRED" || Date.now() > deadline) break;
        await page.waitForTimeout(250);
      }
      check(state === "EXPIRED", `${label} shows ${state}`);
      const forms = await page.locator(`form[action='/referrals/${config.referral}/act']`).count();
      check(forms === 0, `${label} still offers ${forms} actions`);
      await page.goto(`${origin}/referrals?state=EXPIRED`);
      const rows = await page.locator(`td a[href='/referrals/${config.referral}']`).count();
      check(rows === 1, `${label}'s list filtered by EXPIRED shows ${rows} rows`);
      await shot(page, `refusals-expired-${label}`);
    }
  });

  await step("the duress passphrase opens an empty store; the real one then opens nothing", async () => {
    await b.goto(`${B.origin}/settings`);
    await b.fill("#duress", DURESS);
    await b.fill("#duress2", DURESS);
    await Promise.all([
      b.waitForURL(/notice=settings-saved/),
      b.click("form[action='/settings/duress'] button"),
    ]);
    check((await b.locator(".error").count()) === 0, "setting the duress passphrase failed");
    await Promise.all([b.waitForURL(/\/unlock/), b.click("#lock")]);
    await unlock(b, B.origin, DURESS);
    // The create screen of an empty store, nothing of the case.
    check((await b.locator("form[action='/create']").count()) === 1, `no create screen: ${b.url()}`);
    const body = await b.textContent("body");
    check(!body.includes("HWC-00000") && !body.includes("Harbour"), "case content after the duress open");
    await shot(b, "refusals-duress");
    await unlock(b, B.origin, config.passphrase);
    check((await b.textContent(".error")).includes("does not open"), "the real passphrase still opens");
    await b.goto(`${B.origin}/referrals`);
    check(b.url().endsWith("/unlock"), `referrals reachable after duress: ${b.url()}`);
  });

  await step("the panic wipe needs its exact confirmation word, then wipes", async () => {
    await a.goto(`${A.origin}/settings`);
    await a.fill("#confirm", "wipe");
    await a.click("form[action='/settings/wipe'] button");
    await a.waitForSelector(".error");
    check((await a.textContent(".error")).includes("Nothing was wiped"), "a wrong word not refused in words");
    await a.goto(`${A.origin}/referrals`);
    check((await a.locator(`td a[href='/referrals/${config.referral}']`).count()) === 1, "the profile is gone after a refused wipe");
    await a.goto(`${A.origin}/settings`);
    await a.fill("#confirm", "WIPE");
    await Promise.all([a.waitForURL(/\/create/), a.click("form[action='/settings/wipe'] button")]);
    await shot(a, "refusals-wiped");
    await unlock(a, A.origin, config.passphrase);
    check(a.url().endsWith("/create"), `the passphrase opens something after the wipe: ${a.url()}`);
  });

  await noCspViolations();
});
