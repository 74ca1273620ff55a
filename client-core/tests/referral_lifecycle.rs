//! The referral lifecycle: every allowed transition, forbidden ones leave the state unchanged,
//! and who may do what.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use handover_core::identity::Role;
use handover_core::referral::{
    ActorInfo, Closed, Lifecycle, LifecycleError, Outcome, ReferralState, Side, Transition,
};
use handover_proto::e2e::v1 as wire;

const SENDER: ActorInfo = ActorInfo {
    side: Side::Sender,
    role: Role::Caseworker,
};
const RECEIVER: ActorInfo = ActorInfo {
    side: Side::Receiver,
    role: Role::Caseworker,
};
const RECEIVER_AMBASSADOR: ActorInfo = ActorInfo {
    side: Side::Receiver,
    role: Role::Ambassador,
};

fn ok(lc: Lifecycle, t: Transition, who: ActorInfo) -> Lifecycle {
    match lc.apply(t.clone(), who) {
        Ok(next) => next,
        Err((_, e)) => panic!("{t:?} refused: {e}"),
    }
}

/// Asserts the transition is refused and the machine comes back unchanged.
fn refused(lc: Lifecycle, t: Transition, who: ActorInfo) -> (Lifecycle, LifecycleError) {
    let before = lc.clone();
    match lc.apply(t.clone(), who) {
        Ok(next) => panic!(
            "{t:?} allowed from {:?}: now {:?}",
            before.state(),
            next.state()
        ),
        Err((back, e)) => {
            assert_eq!(back, before, "state changed after a refused {t:?}");
            (back, e)
        }
    }
}

fn received() -> Lifecycle {
    Lifecycle::received(wire::ReferralKind::Referral)
}

fn acknowledged() -> Lifecycle {
    let lc = ok(received(), Transition::Delivered, RECEIVER);
    ok(lc, Transition::Acknowledge, RECEIVER)
}

fn accepted() -> Lifecycle {
    ok(acknowledged(), Transition::Accept, RECEIVER)
}

#[test]
fn happy_path_through_info_request_service_and_completion() {
    let lc = received();
    assert_eq!(lc.state(), &ReferralState::Sent);
    let lc = ok(lc, Transition::Delivered, RECEIVER);
    assert_eq!(lc.state(), &ReferralState::Delivered);
    let lc = ok(lc, Transition::Acknowledge, RECEIVER);
    assert_eq!(lc.state(), &ReferralState::Acknowledged);
    let lc = ok(lc, Transition::RequestInfo, RECEIVER);
    assert_eq!(lc.state(), &ReferralState::InfoRequested);
    let lc = ok(lc, Transition::ProvideInfo, SENDER);
    assert_eq!(lc.state(), &ReferralState::Acknowledged);
    let lc = ok(lc, Transition::RequestInfo, RECEIVER);
    // Accept straight from INFO_REQUESTED is allowed.
    let lc = ok(lc, Transition::Accept, RECEIVER);
    assert_eq!(lc.state(), &ReferralState::Accepted);
    let lc = ok(lc, Transition::Update, RECEIVER);
    assert_eq!(lc.state(), &ReferralState::Accepted);
    let lc = ok(lc, Transition::StartService, RECEIVER);
    assert_eq!(lc.state(), &ReferralState::InService);
    let lc = ok(lc, Transition::Update, RECEIVER);
    let lc = ok(lc, Transition::Complete(Outcome::Successful), RECEIVER);
    assert_eq!(lc.state(), &ReferralState::Completed(Outcome::Successful));
    let lc = ok(
        lc,
        Transition::PurgeConfirmed {
            retained_under: None,
        },
        RECEIVER,
    );
    assert_eq!(
        lc.state(),
        &ReferralState::PurgeConfirmed(Closed::RetentionEnded)
    );
}

#[test]
fn complete_straight_from_accepted_and_not_successful_with_reason() {
    let reason = wire::NotSuccessfulReason::UnableToContactClient;
    let lc = ok(
        accepted(),
        Transition::Complete(Outcome::NotSuccessful(reason)),
        RECEIVER,
    );
    assert_eq!(
        lc.state(),
        &ReferralState::Completed(Outcome::NotSuccessful(reason))
    );
}

#[test]
fn not_successful_needs_a_reason() {
    let (_, err) = refused(
        accepted(),
        Transition::Complete(Outcome::NotSuccessful(
            wire::NotSuccessfulReason::Unspecified,
        )),
        RECEIVER,
    );
    assert!(matches!(err, LifecycleError::ReasonRequired { .. }));
}

#[test]
fn decline_with_reason_then_purge() {
    let lc = ok(
        acknowledged(),
        Transition::Decline(wire::DeclineReason::NoCapacity),
        RECEIVER,
    );
    assert_eq!(
        lc.state(),
        &ReferralState::Declined(wire::DeclineReason::NoCapacity)
    );
    let lc = ok(
        lc,
        Transition::PurgeConfirmed {
            retained_under: None,
        },
        RECEIVER,
    );
    assert_eq!(lc.state(), &ReferralState::PurgeConfirmed(Closed::Declined));
}

#[test]
fn decline_needs_a_reason_and_is_only_from_acknowledged_or_info_requested() {
    refused(
        acknowledged(),
        Transition::Decline(wire::DeclineReason::Unspecified),
        RECEIVER,
    );
    // Decline from SENT and DELIVERED.
    refused(
        received(),
        Transition::Decline(wire::DeclineReason::OutOfMandate),
        RECEIVER,
    );
    let delivered = ok(received(), Transition::Delivered, RECEIVER);
    refused(
        delivered,
        Transition::Decline(wire::DeclineReason::OutOfMandate),
        RECEIVER,
    );
    // From INFO_REQUESTED it is fine.
    let info = ok(acknowledged(), Transition::RequestInfo, RECEIVER);
    ok(
        info,
        Transition::Decline(wire::DeclineReason::InsufficientInformation),
        RECEIVER,
    );
}

#[test]
fn accept_only_from_acknowledged_or_info_requested() {
    refused(received(), Transition::Accept, RECEIVER);
    let delivered = ok(received(), Transition::Delivered, RECEIVER);
    refused(delivered, Transition::Accept, RECEIVER);
    refused(accepted(), Transition::Accept, RECEIVER);
}

#[test]
fn complete_before_accept_is_refused() {
    refused(
        acknowledged(),
        Transition::Complete(Outcome::Successful),
        RECEIVER,
    );
    refused(
        received(),
        Transition::Complete(Outcome::Successful),
        RECEIVER,
    );
    let info = ok(acknowledged(), Transition::RequestInfo, RECEIVER);
    refused(info, Transition::Complete(Outcome::Successful), RECEIVER);
}

#[test]
fn start_service_only_after_accept() {
    refused(acknowledged(), Transition::StartService, RECEIVER);
    let lc = ok(accepted(), Transition::StartService, RECEIVER);
    refused(lc, Transition::StartService, RECEIVER);
}

#[test]
fn withdraw_from_every_open_state_and_then_nothing_but_purge() {
    let open = [
        received(),
        ok(received(), Transition::Delivered, RECEIVER),
        acknowledged(),
        ok(acknowledged(), Transition::RequestInfo, RECEIVER),
        accepted(),
        ok(accepted(), Transition::StartService, RECEIVER),
    ];
    for lc in open {
        let lc = ok(lc, Transition::Withdraw, SENDER);
        assert_eq!(lc.state(), &ReferralState::Withdrawn);
        // Accept after withdrawal.
        let (lc, err) = refused(lc, Transition::Accept, RECEIVER);
        assert!(matches!(err, LifecycleError::NotAllowed { .. }));
        let (lc, _) = refused(lc, Transition::Withdraw, SENDER);
        let (lc, _) = refused(lc, Transition::Complete(Outcome::Successful), RECEIVER);
        let lc = ok(
            lc,
            Transition::PurgeConfirmed {
                retained_under: None,
            },
            RECEIVER,
        );
        assert_eq!(
            lc.state(),
            &ReferralState::PurgeConfirmed(Closed::Withdrawn)
        );
        refused(lc, Transition::Withdraw, SENDER);
    }
}

#[test]
fn withdraw_after_completion_or_decline_is_refused() {
    let done = ok(
        accepted(),
        Transition::Complete(Outcome::Successful),
        RECEIVER,
    );
    refused(done, Transition::Withdraw, SENDER);
    let declined = ok(
        acknowledged(),
        Transition::Decline(wire::DeclineReason::OutOfMandate),
        RECEIVER,
    );
    refused(declined, Transition::Withdraw, SENDER);
}

#[test]
fn transfer_moves_ownership_on_accept() {
    let lc = Lifecycle::received(wire::ReferralKind::Transfer);
    let lc = ok(lc, Transition::Delivered, RECEIVER);
    let lc = ok(lc, Transition::Acknowledge, RECEIVER);
    // Before acceptance the sender still owns the case and may withdraw.
    assert!(lc.check(&Transition::Withdraw, SENDER).is_ok());
    let lc = ok(lc, Transition::Accept, RECEIVER);
    let (_, err) = refused(lc, Transition::Withdraw, SENDER);
    assert_eq!(err, LifecycleError::Transferred);
}

#[test]
fn who_may_do_what() {
    // The sender cannot accept, decline or complete for the receiver.
    let (_, err) = refused(acknowledged(), Transition::Accept, SENDER);
    assert!(matches!(err, LifecycleError::WrongSide { .. }));
    refused(
        acknowledged(),
        Transition::Decline(wire::DeclineReason::NoCapacity),
        SENDER,
    );
    refused(
        accepted(),
        Transition::Complete(Outcome::Successful),
        SENDER,
    );
    // The receiver cannot withdraw or answer its own questions.
    refused(acknowledged(), Transition::Withdraw, RECEIVER);
    let info = ok(acknowledged(), Transition::RequestInfo, RECEIVER);
    refused(info, Transition::ProvideInfo, RECEIVER);
    // An ambassador device may confirm delivery but never decides.
    let lc = ok(received(), Transition::Delivered, RECEIVER_AMBASSADOR);
    let lc = ok(lc, Transition::Acknowledge, RECEIVER_AMBASSADOR);
    let (_, err) = refused(lc, Transition::Accept, RECEIVER_AMBASSADOR);
    assert!(matches!(err, LifecycleError::RoleNotPermitted { .. }));
    // Consent changes are recorded by caseworkers, not ambassadors.
    refused(
        accepted(),
        Transition::ConsentRevoked,
        ActorInfo {
            side: Side::Sender,
            role: Role::Ambassador,
        },
    );
}

#[test]
fn expiry_only_before_a_decision() {
    for lc in [
        received(),
        ok(received(), Transition::Delivered, RECEIVER),
        acknowledged(),
        ok(acknowledged(), Transition::RequestInfo, RECEIVER),
    ] {
        let lc = ok(lc, Transition::Expire, SENDER);
        assert_eq!(lc.state(), &ReferralState::Expired);
        // The receiver's local expiry and the sender's signed EXPIRED may both arrive.
        let lc = ok(lc, Transition::Expire, RECEIVER);
        let (lc, _) = refused(lc, Transition::Accept, RECEIVER);
        let lc = ok(
            lc,
            Transition::PurgeConfirmed {
                retained_under: None,
            },
            RECEIVER,
        );
        assert_eq!(lc.state(), &ReferralState::PurgeConfirmed(Closed::Expired));
    }
    refused(accepted(), Transition::Expire, SENDER);
}

#[test]
fn consent_revoked_then_purged_or_retained_under_exception() {
    for lc in [
        received(),
        acknowledged(),
        accepted(),
        ok(
            accepted(),
            Transition::Complete(Outcome::Successful),
            RECEIVER,
        ),
    ] {
        let lc = ok(lc, Transition::ConsentRevoked, SENDER);
        assert_eq!(lc.state(), &ReferralState::ConsentRevoked);
        let (lc, _) = refused(lc, Transition::StartService, RECEIVER);
        // Retention needs a legal basis.
        let (lc, err) = refused(
            lc,
            Transition::PurgeConfirmed {
                retained_under: Some("  ".to_owned()),
            },
            RECEIVER,
        );
        assert!(matches!(err, LifecycleError::ReasonRequired { .. }));
        let retained = ok(
            lc.clone(),
            Transition::PurgeConfirmed {
                retained_under: Some("Court order 2026/114".to_owned()),
            },
            RECEIVER,
        );
        assert_eq!(
            retained.state(),
            &ReferralState::RetainedUnderException {
                after: Closed::ConsentRevoked,
                legal_basis: "Court order 2026/114".to_owned()
            }
        );
        let purged = ok(
            lc,
            Transition::PurgeConfirmed {
                retained_under: None,
            },
            RECEIVER,
        );
        assert_eq!(
            purged.state(),
            &ReferralState::PurgeConfirmed(Closed::ConsentRevoked)
        );
    }
    // Nothing to revoke once declined and purged.
    let declined = ok(
        acknowledged(),
        Transition::Decline(wire::DeclineReason::NoCapacity),
        RECEIVER,
    );
    refused(declined, Transition::ConsentRevoked, SENDER);
}

#[test]
fn renewal_keeps_the_state() {
    let lc = ok(accepted(), Transition::ConsentRenewed, SENDER);
    assert_eq!(lc.state(), &ReferralState::Accepted);
}

#[test]
fn purge_is_refused_while_an_offer_is_open() {
    refused(
        acknowledged(),
        Transition::PurgeConfirmed {
            retained_under: None,
        },
        RECEIVER,
    );
}
