// The two-organisation story in headless Chromium, through two `handover app` instances and a
// relay (started by tests/tests/app_browser.rs). Prints "N passed, N failed" and exits non-zero on
// any failure. Screenshots of each main screen go to $HANDOVER_SCREENSHOTS.
import { config, WAIT, check, shot, run } from "./harness.mjs";

await run("story", async ({ step, page, noCspViolations }) => {
  // One browser context per organisation: each holds its own app's cookie.
  const a = await page("A");
  const b = await page("B");
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

  let receiptPath = "";
  await step("consent: A records the person's consent; the copy reads right to left in Arabic", async () => {
    await a.goto(`${A.origin}/consent/new`);
    await a.click("#record-consent");
    await a.waitForSelector("#err-principal_ref");
    check((await a.textContent("#err-recipient")).length > 0, "no error at the recipients");
    await a.fill("#principal_ref", "HWC-0193");
    await a.check("input[name=recipient]");
    await a.check("input[name=services][value=shelter]");
    for (const s of ["identity", "safe_contact", "reason", "risk", "appointment", "attachments"]) {
      await a.check(`input[name=sections][value=${s}]`);
    }
    await a.fill("#purpose", "Safe accommodation after leaving a violent home");
    await a.fill("#jurisdictions", "BE");
    await a.fill("#notice_ref", "Harbour privacy notice v3");
    await a.fill("#controller", "Harbour");
    await a.fill("#controller_contact", "dpo@harbour.invalid");
    await a.fill("#withdrawal_method", "Tell your caseworker or call the office");
    await a.fill("#witness", "cw-17");
    await shot(a, "12-consent-record");
    await Promise.all([a.waitForURL(/\/consent\/[0-9a-f]{32}\?notice=/), a.click("#record-consent")]);
    receiptPath = new URL(a.url()).pathname;
    check((await a.textContent("#receipt")).length > 200, "no receipt text");
    await a.click("a[lang=ar]");
    await a.waitForSelector("#receipt[dir=rtl][lang=ar]");
    await shot(a, "13-consent-arabic");
    const kantara = await a.request.get(`${A.origin}${receiptPath}/kantara.json`);
    check(kantara.ok(), `Kantara download ${kantara.status()}`);
    const json = await kantara.json();
    check(JSON.stringify(json).includes("HWC-0193"), "Kantara JSON lacks the principal");
  });

  let referralA = "";
  await step("compose: the consent gate's refusal is shown at the field; then the offer goes out with an attachment", async () => {
    await a.goto(`${A.origin}/referrals/new`);
    await a.selectOption("#to", { index: 1 });
    await a.fill("#case_ref", "HWC-0193");
    await a.check("input[name=services][value=medical]");
    await a.fill("#purpose", "Safe accommodation after leaving a violent home");
    await a.fill("#languages", "ar");
    await a.selectOption("#consent", { index: 1 });
    await a.fill("#name_or_alias", "Amina");
    await a.selectOption("#safe_to_contact", "yes");
    await a.fill("#code_word", "bluebird");
    await a.fill("#reason", "Left a violent partner two days ago.");
    await a.check("#include_risk, input[name=include_risk]");
    await a.selectOption("#risk_level", "high");
    await a.fill("#appointment_at", "2026-12-08T10:00");
    await a.fill("#appointment_place", "Riverside office");
    await a.setInputFiles("#attachments", {
      name: "case-note.txt",
      mimeType: "text/plain",
      buffer: Buffer.from("Case note: needs a ground-floor room.\n"),
    });
    await a.click("#send-referral");
    await a.waitForSelector("#err-services", { timeout: WAIT });
    check((await a.textContent("#err-services")).includes("Nothing was sent"), "gate error not at services");
    await shot(a, "14-compose-refused");
    await a.uncheck("input[name=services][value=medical]");
    await a.check("input[name=services][value=shelter]");
    await a.setInputFiles("#attachments", {
      name: "case-note.txt",
      mimeType: "text/plain",
      buffer: Buffer.from("Case note: needs a ground-floor room.\n"),
    });
    await Promise.all([a.waitForURL(/\/referrals\/[0-9a-f]{32}\?notice=referral-sent/, { timeout: WAIT }), a.click("#send-referral")]);
    referralA = new URL(a.url()).pathname;
    await shot(a, "15-referral-sent");
  });

  await step("offer: B's open list shows the offer live; B accepts; the body arrives without anyone pressing sync", async () => {
    await b.goto(`${B.origin}/referrals`);
    await b.waitForSelector("#referral-list a.state", { timeout: WAIT });
    await shot(b, "16-referral-list");
    await Promise.all([b.waitForURL(/\/referrals\/[0-9a-f]{32}$/), b.click("#referral-list a.state")]);
    check((await b.textContent("#body-note")).includes("only after you accept"), "body shown before accepting");
    await b.click("#act-accept");
    await b.waitForURL(/notice=referral-acted/);
    await b.waitForSelector("#referral-body >> text=Amina", { timeout: WAIT });
    check((await b.textContent("#referral-body")).includes("bluebird"), "safe-contact section missing");
    check((await b.textContent("#referral-body")).includes("2026-12-08 10:00 UTC"), "appointment missing");
    await shot(b, "17-referral-body");
    const link = await b.getAttribute("#referral-body a[download]", "href");
    const file = await b.request.get(`${B.origin}${link}`);
    check((await file.text()).includes("ground-floor room"), "attachment content differs");
  });

  await step("lifecycle: B starts service and completes; A's page follows live; timelines verify", async () => {
    await a.goto(`${A.origin}${referralA}`);
    await b.click("#act-start");
    await b.waitForSelector("#referral-state >> text=IN_SERVICE");
    await b.click("#act-complete");
    await b.waitForSelector("#referral-state >> text=COMPLETED");
    await a.waitForSelector("#referral-state >> text=COMPLETED", { timeout: WAIT });
    check((await a.textContent("#timeline-check")).includes("verified"), "A's timeline not verified");
    check((await b.textContent("#timeline-check")).includes("verified"), "B's timeline not verified");
    await shot(a, "18-referral-completed");
  });

  await step("information and decline: B asks, A answers, B declines with a reason; A sees each step live", async () => {
    await a.goto(`${A.origin}/referrals/new`);
    await a.selectOption("#to", { index: 1 });
    await a.fill("#case_ref", "HWC-0194");
    await a.check("input[name=services][value=shelter]");
    await a.fill("#purpose", "Safe accommodation after leaving a violent home");
    await a.selectOption("#consent", { index: 1 });
    await a.fill("#reason", "Needs a place for two children as well.");
    // Without a language the core refuses the draft: the error stands at the languages field.
    await a.click("#send-referral");
    await a.waitForSelector("#err-languages", { timeout: WAIT });
    await a.fill("#languages", "ar, fr");
    await a.click("#send-referral");
    // The body's required parts (identity, safe contact, risk): each refusal at its field.
    await a.waitForSelector("#err-name_or_alias", { timeout: WAIT });
    await a.fill("#name_or_alias", "Amina");
    await a.selectOption("#safe_to_contact", "no");
    await a.check("input[name=include_risk]");
    await Promise.all([a.waitForURL(/\/referrals\/[0-9a-f]{32}\?notice=referral-sent/, { timeout: WAIT }), a.click("#send-referral")]);
    const second = new URL(a.url()).pathname;
    await b.goto(`${B.origin}/referrals?q=HWC-0194`);
    await b.waitForSelector("#referral-list a.state", { timeout: WAIT });
    await Promise.all([b.waitForURL(/\/referrals\/[0-9a-f]{32}$/), b.click("#referral-list a.state")]);
    await b.fill("#questions", "Are the children under 12?");
    await b.click("#act-request");
    await b.waitForSelector("#referral-state >> text=INFO_REQUESTED");
    await a.goto(`${A.origin}${second}`);
    await a.waitForSelector("#referral-state >> text=INFO_REQUESTED", { timeout: WAIT });
    await a.fill("#answers", "Yes, both are 6 and 9.");
    await a.click("#act-provide");
    await a.waitForURL(/notice=referral-acted/);
    // Wait for the answer to reach B's open page first: its live refresh replaces the action
    // forms and would reset a reason chosen before it.
    await b.waitForSelector("#referral-state >> text=ACKNOWLEDGED", { timeout: WAIT });
    await b.selectOption("#decline-reason", { index: 2 });
    await b.click("#act-decline");
    await b.waitForSelector("#referral-state >> text=DECLINED");
    await a.waitForSelector("#referral-state >> text=DECLINED", { timeout: WAIT });
    check((await a.locator("#referral-actions button").count()) === 0, "actions left on a declined referral");
    await shot(a, "19-referral-declined");
  });

  await step("withdraw: A withdraws an offer with a reason; B erases it and confirms, both pages follow live", async () => {
    await a.goto(`${A.origin}/referrals/new`);
    await a.selectOption("#to", { index: 1 });
    await a.fill("#case_ref", "HWC-0195");
    await a.check("input[name=services][value=shelter]");
    await a.fill("#purpose", "Safe accommodation after leaving a violent home");
    await a.fill("#languages", "ar");
    await a.selectOption("#consent", { index: 1 });
    await a.fill("#name_or_alias", "Amina");
    await a.selectOption("#safe_to_contact", "no");
    await a.fill("#reason", "Sent to the wrong service.");
    await a.check("input[name=include_risk]");
    await Promise.all([a.waitForURL(/\/referrals\/[0-9a-f]{32}\?notice=referral-sent/, { timeout: WAIT }), a.click("#send-referral")]);
    const third = new URL(a.url()).pathname;
    await b.goto(`${B.origin}/referrals?q=HWC-0195`);
    await b.waitForSelector("#referral-list a.state", { timeout: WAIT });
    await Promise.all([b.waitForURL(/\/referrals\/[0-9a-f]{32}$/), b.click("#referral-list a.state")]);
    check((await b.locator("#act-accept").count()) === 1, "B cannot accept the new offer");
    // A refuses to withdraw without a reason (the field is required), then withdraws.
    await a.click("#act-withdraw");
    check(new URL(a.url()).pathname === third && !a.url().includes("referral-acted"), "withdrawn without a reason");
    check((await a.textContent("#referral-state")).includes("SENT"), "withdrawn without a reason");
    await a.fill("#withdraw-reason", "The person chose another shelter.");
    await Promise.all([a.waitForURL(/notice=referral-acted/), a.click("#act-withdraw")]);
    // WITHDRAWN asks the receiver to erase what it holds: B's open page follows to the erased
    // offer, and A's page to B's signed confirmation, both without a reload.
    await b.waitForSelector("#referral-state >> text=PURGE_CONFIRMED", { timeout: WAIT });
    check((await b.textContent("main")).includes("erased on this device"), "B did not erase the withdrawn offer");
    check((await b.locator("#referral-actions button").count()) === 0, "actions left on B's withdrawn referral");
    await a.waitForSelector("#referral-state >> text=PURGE_CONFIRMED", { timeout: WAIT });
    check((await a.locator("#referral-actions button").count()) === 0, "actions left on A's withdrawn referral");
    check((await a.textContent("main")).includes("WITHDRAW"), "A's timeline does not show the withdrawal");
    check((await a.textContent("#timeline-check")).includes("verified"), "A's timeline not verified");
    await a.goto(`${A.origin}/referrals?state=PURGE_CONFIRMED`);
    check((await a.textContent("#referral-list")).includes("HWC-0195"), "A's list filtered by PURGE_CONFIRMED lacks the offer");
    await shot(b, "20-referral-withdrawn");
  });

  await step("erasure: A withdraws consent; B's confirmation appears on A's receipt page", async () => {
    await a.goto(`${A.origin}${receiptPath}`);
    await Promise.all([a.waitForURL(/notice=consent-withdrawn/), a.click("#withdraw")]);
    await a.waitForFunction(() => {
      const cell = document.querySelector("#purge .purge-confirmed");
      return cell && Number(cell.textContent) >= 1;
    }, null, { timeout: WAIT });
    await shot(a, "21-erasure-confirmed");
  });

  await step("another origin's page cannot act on the app", async () => {
    const evil = await a.context().newPage();
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
    const other = await a.context().newPage();
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

  await noCspViolations();
});
