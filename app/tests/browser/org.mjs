// A new device joins Riverside in headless Chromium: a third `handover app` on a new profile
// chooses "Join an organisation", Riverside's admin (the app of the story's Riverside profile,
// opened again) enrols it as caseworker after the check codes on both pages are compared, the
// new device reaches home, the admin's device list shows it with its role, and the new device
// appears as a colleague in the admin's contacts. Prints "N passed, N failed" and exits
// non-zero on any failure. Screenshots go to $HANDOVER_SCREENSHOTS (names start with "org-").
import { config, WAIT, check, shot, run } from "./harness.mjs";

const NEW_NAME = "Riverside laptop 2";

await run("org", async ({ step, page, noCspViolations }) => {
  const admin = await page("admin");
  const fresh = await page("new");
  const R = config.admin;
  const N = config.new;

  await step("launch: Riverside's admin unlocks; the new device's app opens", async () => {
    await admin.goto(R.launch);
    await admin.goto(`${R.origin}/unlock`);
    await admin.fill("#passphrase", config.passphrase);
    await Promise.all([admin.waitForURL(`${R.origin}/`), admin.click("button[type=submit]")]);
    await fresh.goto(N.launch);
    check(!fresh.url().includes("k="), "secret still in the address");
  });

  let request = "";
  let checkNew = "";
  await step("join: the new device chooses to join and shows its request and check code", async () => {
    await fresh.goto(`${N.origin}/create`);
    await Promise.all([fresh.waitForURL(`${N.origin}/join`), fresh.click("#choose-join")]);
    await shot(fresh, "org-01-join");
    await fresh.fill("#name", NEW_NAME);
    await fresh.fill("#relay", config.relay);
    await fresh.fill("#pin", config.pin);
    await fresh.fill("#passphrase", config.passphrase);
    await fresh.fill("#passphrase2", config.passphrase);
    await Promise.all([
      fresh.waitForURL(`${N.origin}/join/pending`),
      fresh.click("main form button[type=submit]"),
    ]);
    request = (await fresh.inputValue("#request-code")).trim();
    checkNew = (await fresh.textContent("#check-code")).trim();
    check(request.startsWith("handover://enrol-request#"), `request ${request}`);
    check(/^[0-9a-f]{4}(-[0-9a-f]{4}){4}$/.test(checkNew), `check code ${checkNew}`);
    check((await fresh.locator(".qr svg").count()) === 1, "no QR code of the request");
    await shot(fresh, "org-02-waiting");
  });

  await step("join: a text that is not an enrolment code is refused in words", async () => {
    await fresh.fill("#code", "handover://invite#not-this");
    await fresh.click("#join-finish");
    await fresh.waitForSelector(".error");
    check((await fresh.textContent(".error")).includes("not an enrolment code"), "refusal not explained");
  });

  let code = "";
  await step("enrol: the admin pastes the request and sees the same check code", async () => {
    await admin.goto(`${R.origin}/organisation`);
    await shot(admin, "org-03-organisation");
    await admin.fill("#request", request);
    await Promise.all([
      admin.waitForURL(`${R.origin}/organisation/enrol`),
      admin.click("#enrol-check"),
    ]);
    const checkAdmin = (await admin.textContent("#check-code")).trim();
    check(checkAdmin === checkNew, `check codes differ: ${checkAdmin} / ${checkNew}`);
    check((await admin.textContent("main")).includes(NEW_NAME), "requested name not shown");
    await shot(admin, "org-04-compare");
    await admin.check("input[name=role][value=caseworker]");
    await Promise.all([
      admin.waitForURL(`${R.origin}/organisation/enrol/confirm`),
      admin.click("#enrol-confirm"),
    ]);
    code = (await admin.inputValue("#enrolment-code")).trim();
    check(code.startsWith("handover://enrolment#"), `code ${code.slice(0, 40)}`);
    check((await admin.locator(".qr svg").count()) <= 1, "more than one QR code");
    await shot(admin, "org-05-enrolment-code");
  });

  await step("join: the new device finishes with the enrolment code and reaches home", async () => {
    await fresh.fill("#code", code);
    await Promise.all([fresh.waitForURL(/\/\?notice=joined/, { timeout: WAIT }), fresh.click("#join-finish")]);
    check((await fresh.textContent("header")).includes(NEW_NAME), "the new device's name is not shown");
    await shot(fresh, "org-06-home");
  });

  await step("devices: the admin's list shows the new device as caseworker", async () => {
    await admin.goto(`${R.origin}/organisation`);
    const row = admin.locator("#devices tr", { hasText: NEW_NAME });
    check((await row.count()) === 1, "the new device is not listed");
    check((await row.textContent()).includes("caseworker"), "its role is not shown");
  });

  await step("colleague: the new device appears in the admin's contacts", async () => {
    await admin.goto(`${R.origin}/contacts`);
    await admin.waitForSelector(`#contact-list :text("${NEW_NAME}")`, { timeout: WAIT });
    await fresh.goto(`${N.origin}/contacts`);
    check((await fresh.locator("#contact-list a[href^='/chats/']").count()) >= 1, "no colleague on the new device");
    await shot(admin, "org-07-colleague");
  });

  await step("language: the new device chooses Arabic in its settings; every page is then right to left", async () => {
    await fresh.goto(`${N.origin}/settings`);
    await fresh.selectOption("#language", "ar");
    await Promise.all([fresh.waitForURL(`${N.origin}/settings`), fresh.click("form.language button[type=submit]")]);
    for (const path of ["/settings", "/", "/referrals", "/organisation", "/contacts"]) {
      await fresh.goto(`${N.origin}${path}`);
      check((await fresh.getAttribute("html", "dir")) === "rtl", `${path} is not right to left`);
      check((await fresh.getAttribute("html", "lang")) === "ar", `${path} is not in Arabic`);
    }
    // Fingerprints and ids keep their left-to-right order inside the Arabic page.
    const code = await fresh.locator("code").first();
    check((await code.evaluate((el) => getComputedStyle(el).direction)) === "ltr", "a fingerprint reads right to left");
    await shot(fresh, "org-08-arabic");
    await fresh.goto(`${N.origin}/settings`);
    await fresh.selectOption("#language", "en");
    await Promise.all([fresh.waitForURL(`${N.origin}/settings`), fresh.click("form.language button[type=submit]")]);
    check((await fresh.getAttribute("html", "dir")) === "ltr", "English is not left to right again");
  });

  await noCspViolations();
});
