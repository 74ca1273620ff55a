//! The referral list over real HTTP on a real profile (built through the client core against a
//! real relay): server-side filters (state, direction, whose, text), both orders, pages of 100
//! with counts and previous/next links, and the live region the page's script refreshes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use handover_app::AppArgs;
use handover_core::engine::RelayInfo;
use handover_core::referral::Action;
use hyper::StatusCode;

mod http;
mod support;

/// Referrals in the profile: three pages of 100, the last one partly filled.
const COUNT: usize = 230;

/// The `n`th cell (counted from 1) of each row shown, in order.
fn column(body: &str, n: usize) -> Vec<String> {
    body.split("<tr>\n")
        .skip(1)
        .map(|row| {
            row.split("<td>")
                .nth(n)
                .unwrap()
                .split("</td>")
                .next()
                .unwrap()
                .to_owned()
        })
        .collect()
}

/// The case references of the rows shown, in order (the cell marked `case-ref`, isolated in
/// `<bdi>`).
fn case_refs(body: &str) -> Vec<String> {
    body.split("<td class=\"case-ref\"><bdi>")
        .skip(1)
        .map(|s| s.split("</bdi>").next().unwrap().to_owned())
        .collect()
}

/// The priorities of the rows shown, in order (the fourth cell of each row).
fn priorities(body: &str) -> Vec<String> {
    column(body, 4)
}

/// The `href` of the link with this id, HTML entities of `&` undone.
fn link(body: &str, id: &str) -> Option<String> {
    let rest = body.split(&format!("id=\"{id}\"")).next()?;
    if rest.len() == body.len() {
        return None;
    }
    let href = rest.rsplit("href=\"").next()?.split('"').next()?;
    Some(href.replace("&amp;", "&").replace("&#38;", "&"))
}

/// The text of the count line.
fn count_line(body: &str) -> String {
    body.split("<p id=\"referral-count\">")
        .nth(1)
        .unwrap()
        .split("</p>")
        .next()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_filters_orders_and_pages_on_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let relay = http::start_relay(dir.path().join("relay")).await;
    let info = RelayInfo {
        host_port: relay.local_addr().to_string(),
        pin: relay.pin(),
    };
    let pair = support::Pair::create(dir.path(), info).await;
    let now = support::unix_now();
    let mut ids = Vec::new();
    for n in 0..COUNT {
        // One second apart, so "newest first" is HWC-00229, HWC-00228, ...
        ids.push(pair.offer(n, now + n as u64, None).await);
    }
    // One referral is withdrawn (a second state for the state filter).
    let withdrawn = ids[7];
    pair.harbour
        .with_engine(move |e, rng, t| {
            e.referral_act(
                &withdrawn,
                Action::Withdraw {
                    reason: String::new(),
                },
                t + COUNT as u64,
                rng,
            )
        })
        .await
        .unwrap()
        .unwrap();
    let fingerprint = handover_core::engine::org_fingerprint(&pair.b_root);
    pair.shutdown().await;

    let args = AppArgs::headless(http::loopback());
    let b = http::Browser::start(dir.path().join("harbour"), &args).await;
    b.unlock(support::PASSPHRASE).await;
    let get = |path: String| {
        let b = &b;
        async move {
            let a = b.get(&path).await;
            assert_eq!(a.status, StatusCode::OK, "{path}: {}", a.body);
            a.body
        }
    };

    // The first page: the newest 100, the counts, a next link and no previous one, all inside
    // the live region the page's script refreshes.
    let body = get("/referrals".into()).await;
    let refs = case_refs(&body);
    assert_eq!(refs.len(), 100);
    assert_eq!(refs[0], "HWC-00229");
    assert_eq!(refs[99], "HWC-00130");
    assert_eq!(
        count_line(&body),
        format!("Referrals 1–100 of {COUNT} matching ({COUNT} on this device)")
    );
    assert!(body.contains(&format!("data-total=\"{COUNT}\"")));
    let live = body.split("data-live=\"referral-list\"").nth(1).unwrap();
    let live = live.split("</section>").next().unwrap();
    assert!(live.contains("Page 1 of 3") && live.contains("rel=\"next\""));
    assert!(link(&body, "page-previous").is_none());
    let next = link(&body, "page-next").unwrap();
    assert_eq!(next, "/referrals?page=2");

    // Following next, then to the last page, and back.
    let body = get(next).await;
    assert_eq!(case_refs(&body)[0], "HWC-00129");
    assert_eq!(link(&body, "page-previous").unwrap(), "/referrals?page=1");
    let last = get(link(&body, "page-next").unwrap()).await;
    let refs = case_refs(&last);
    assert_eq!(refs.len(), COUNT - 200);
    assert_eq!(refs.last().unwrap(), "HWC-00000");
    assert!(count_line(&last).starts_with(&format!("Referrals 201–{COUNT} of {COUNT}")));
    assert!(link(&last, "page-next").is_none());
    // A page past the end shows the last one.
    assert_eq!(case_refs(&get("/referrals?page=99".into()).await), refs);

    // The text filter (case-insensitive), with its filters kept in the page links.
    let body = get("/referrals?q=hwc-001".into()).await;
    let refs = case_refs(&body);
    assert_eq!(refs.len(), 100, "HWC-00100 to HWC-00199");
    assert!(refs.iter().all(|r| r.starts_with("HWC-001")));
    assert!(count_line(&body).contains("of 100 matching"));
    assert!(link(&body, "page-next").is_none());
    let body = get("/referrals?q=HWC-0002&sort=urgent".into()).await;
    let mut refs = case_refs(&body);
    refs.sort();
    assert_eq!(
        refs,
        (20..30).map(|n| format!("HWC-{n:05}")).collect::<Vec<_>>()
    );
    // By service and by the organisation fingerprint.
    assert_eq!(
        case_refs(&get("/referrals?q=SHELTER&page=3".into()).await).len(),
        30
    );
    assert!(case_refs(&get("/referrals?q=legal".into()).await).is_empty());
    let group = fingerprint.split(' ').nth(2).unwrap();
    let body = get(format!("/referrals?q={group}")).await;
    assert!(count_line(&body).contains(&format!("of {COUNT} matching")));

    // State: the withdrawn one alone; the rest are SENT.
    let body = get("/referrals?state=WITHDRAWN".into()).await;
    assert_eq!(case_refs(&body), ["HWC-00007"]);
    assert!(body.contains("<option value=\"WITHDRAWN\" selected>"));
    let body = get("/referrals?state=SENT&q=hwc-0000".into()).await;
    assert_eq!(
        case_refs(&body),
        [
            "HWC-00009",
            "HWC-00008",
            "HWC-00006",
            "HWC-00005",
            "HWC-00004",
            "HWC-00003",
            "HWC-00002",
            "HWC-00001",
            "HWC-00000"
        ]
    );

    // Direction and whose: every referral here was sent by this device, which holds them all.
    assert_eq!(
        count_line(&get("/referrals?side=sent&whose=mine".into()).await),
        format!("Referrals 1–100 of {COUNT} matching ({COUNT} on this device)")
    );
    let body = get("/referrals?side=received".into()).await;
    assert!(case_refs(&body).is_empty());
    assert_eq!(
        count_line(&body),
        format!("No referral matches these filters ({COUNT} on this device).")
    );

    // Most urgent first: emergencies (every third offer, n % 3 == 2), then urgent, then normal,
    // and the order holds across pages, whose links keep it.
    let body = get("/referrals?sort=urgent".into()).await;
    let p = priorities(&body);
    assert_eq!(p.len(), 100);
    let emergencies = (0..COUNT).filter(|n| n % 3 == 2).count();
    assert!(p[..emergencies].iter().all(|x| x == "emergency"), "{p:?}");
    assert!(p[emergencies..].iter().all(|x| x == "urgent"), "{p:?}");
    let next = link(&body, "page-next").unwrap();
    assert_eq!(next, "/referrals?sort=urgent&page=2");
    let last = get("/referrals?sort=urgent&page=3".into()).await;
    assert!(priorities(&last).iter().all(|x| x == "normal"));
    // Filters with characters that need encoding survive in the links.
    let body = get("/referrals?q=HWC+0%26&sort=urgent".into()).await;
    assert!(case_refs(&body).is_empty());
    assert!(
        body.contains("value=\"HWC 0&amp;\"") || body.contains("value=\"HWC 0&#38;\""),
        "{body}"
    );

    b.stop().await;
    relay.shutdown().await;
}
