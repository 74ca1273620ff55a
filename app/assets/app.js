// The caseworker's desk: live updates and small enhancements. Pages work without this file.
// Loaded from this origin only (the Content-Security-Policy forbids inline script).
"use strict";

(function () {
  const unlocked = document.body.dataset.unlocked === "1";

  // Once this page is being left (a form was submitted, a link followed), live events must not
  // start a second navigation: it would abort the first (the Lock button's own answer is the
  // unlock screen, and the "locked" event arrives at the same moment).
  let leaving = false;
  window.addEventListener("beforeunload", () => { leaving = true; });
  function goUnlock() {
    if (!leaving) location.assign("/unlock");
  }

  // Replaces every [data-live] region with its counterpart from a fresh copy of this page.
  let refreshing = null;
  async function refresh() {
    if (refreshing) { refreshing.again = true; return; }
    refreshing = { again: false };
    try {
      const response = await fetch(location.href, { credentials: "same-origin", cache: "no-store" });
      if (response.redirected && new URL(response.url).pathname === "/unlock") {
        goUnlock();
        return;
      }
      if (!response.ok) return;
      const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
      for (const region of document.querySelectorAll("[data-live]")) {
        const next = fresh.querySelector('[data-live="' + region.dataset.live + '"]');
        if (next && next.innerHTML !== region.innerHTML) {
          region.innerHTML = next.innerHTML;
          region.dispatchEvent(new CustomEvent("live-updated", { bubbles: true }));
        }
      }
    } catch (e) {
      // Offline or locked: the next event tries again.
    } finally {
      const again = refreshing.again;
      refreshing = null;
      if (again) refresh();
    }
  }

  function scrollMessages() {
    const list = document.getElementById("messages");
    if (list) list.scrollTop = list.scrollHeight;
  }

  // Disappearing messages leave the page when their time comes, even if nobody reloads.
  function dropExpired() {
    const now = Date.now() / 1000;
    for (const li of document.querySelectorAll("[data-expires]")) {
      if (Number(li.dataset.expires) <= now) li.remove();
    }
  }

  if (unlocked) {
    const events = new EventSource("/events");
    // Whatever happened while the stream was not open (page load, reconnect) is fetched once.
    let opened = false;
    events.addEventListener("open", () => {
      if (opened) refresh();
      opened = true;
      refresh();
    });
    for (const name of ["message", "referral", "contacts"]) {
      events.addEventListener(name, refresh);
    }
    events.addEventListener("locked", goUnlock);
    window.addEventListener("beforeunload", () => events.close());
    const status = document.getElementById("status");
    const setStatus = (online) => {
      if (!status) return;
      status.className = "status " + (online ? "online" : "offline");
      status.textContent = online ? status.dataset.online : status.dataset.offline;
    };
    events.addEventListener("online", () => setStatus(true));
    events.addEventListener("offline", () => setStatus(false));
    document.addEventListener("live-updated", scrollMessages);
    setInterval(dropExpired, 1000);
  }
  scrollMessages();

  // Enter sends a chat message (Shift+Enter: new line).
  const text = document.querySelector("#send textarea");
  if (text) {
    text.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey) {
        e.preventDefault();
        if (text.value.trim() !== "") text.form.requestSubmit();
      }
    });
    text.focus();
  }

  // Attachments: upload with a progress bar (forms marked data-upload). A redirect means
  // success (go to the page it names); otherwise the answer is the form with its errors.
  function bindUploads() {
    for (const form of document.querySelectorAll("form[data-upload]")) {
      form.addEventListener("submit", (e) => {
        const bar = form.querySelector("progress");
        if (!bar) return;
        e.preventDefault();
        const xhr = new XMLHttpRequest();
        xhr.open("POST", form.action);
        xhr.upload.addEventListener("progress", (p) => {
          if (p.lengthComputable) { bar.max = p.total; bar.value = p.loaded; }
        });
        xhr.addEventListener("load", () => {
          if (new URL(xhr.responseURL).pathname !== new URL(form.action).pathname) {
            location.assign(xhr.responseURL);
            return;
          }
          const fresh = new DOMParser().parseFromString(xhr.responseText, "text/html");
          const main = fresh.querySelector("main");
          if (main) {
            document.querySelector("main").replaceWith(main);
            bindUploads();
            const first = document.querySelector(".field-error, .error");
            if (first) first.scrollIntoView();
          }
        });
        xhr.send(new FormData(form));
      });
    }
  }
  bindUploads();
})();
