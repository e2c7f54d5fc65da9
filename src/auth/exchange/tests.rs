//! The exchange's races, without HTTP: a real SQLite store behind the auth
//! tests' [`TestStore`], whose session writes can be made to lose to a
//! rival writer (run inside the write, before it reaches the store) or to
//! answer a conflict without writing. Each test asserts the exact outcome
//! and that the race really happened (the conflicts counted).

use std::sync::atomic::Ordering;

use tokio::sync::oneshot;

use super::*;
use crate::auth::tests::{Fixture, fixture, named};
use crate::clock::Clock;
use crate::keys::RevokeReason;
use crate::keys::{KeyStatus, SecretString};
use crate::store::KeyStore;
use crate::token::{KeySpec, TokenSettings};

const SIGNING_KEY: &str = "exchange-tests-signing-key-0123456789abcdef";

fn exchange(f: &Fixture) -> Arc<TokenExchange> {
    let tokens = Tokens::new(&TokenSettings::new(vec![KeySpec::hs256(SecretString::from(
        SIGNING_KEY,
    ))]))
    .unwrap();
    let store: SharedStore = f.store.clone();
    Arc::new(TokenExchange::new(
        Arc::new(tokens),
        store,
        Arc::new(f.clock.clone()),
    ))
}

async fn key(f: &Fixture, scopes: &[&str]) -> Key {
    let mut request = named("exchange");
    request.scopes = scopes.iter().map(|s| (*s).to_owned()).collect();
    f.manager.create(request, &Actor::cli()).await.unwrap().key
}

/// The refresh token of `issued`, as a client would present it.
fn presented(issued: &Issued) -> PresentedRefreshToken {
    issued.refresh.as_ref().unwrap().expose().parse().unwrap()
}

fn saves(f: &Fixture) -> usize {
    f.store.saves.load(Ordering::SeqCst)
}

fn conflicts(f: &Fixture) -> usize {
    f.store.conflicts.load(Ordering::SeqCst)
}

/// Whether a refresh was refused because its session is revoked.
fn refused_as_revoked(e: &ExchangeError) -> bool {
    matches!(
        e.failure,
        ExchangeFailure::RefreshRefused(RefreshError::Revoked { .. })
    )
}

/// Whether a refresh was refused as not of its session's current family.
fn refused_as_not_in_family(e: &ExchangeError) -> bool {
    matches!(
        e.failure,
        ExchangeFailure::RefreshRefused(RefreshError::NotInFamily { .. })
    )
}

async fn stored(f: &Fixture, session_id: &SessionId) -> crate::keys::Session {
    f.store.session(session_id).await.unwrap().unwrap()
}

#[tokio::test]
async fn a_login_that_loses_its_insert_continues_the_session_that_won() {
    let f = fixture().await;
    let x = exchange(&f);
    let key = key(&f, &["read"]).await;
    // Another replica's login for the same key and client session commits
    // between this login's read (no row) and its insert.
    let (sent, theirs) = oneshot::channel();
    let (rival, rival_key) = (Arc::clone(&x), key.clone());
    f.store.race_next_save(async move {
        let issued = rival.login(&rival_key, Some("phone".into())).await;
        sent.send(issued.unwrap()).unwrap();
    });

    let ours = x.login(&key, Some("phone".into())).await.unwrap();
    let theirs = theirs.await.unwrap();
    assert_eq!(
        (saves(&f), conflicts(&f)),
        (3, 1),
        "our insert lost once, then our update won"
    );
    assert_eq!(
        ours.session_id, theirs.session_id,
        "one session per key and client session"
    );
    assert_eq!(
        ours.access.expose(),
        theirs.access.expose(),
        "the continued session's access token comes back"
    );
    let row = stored(&f, &ours.session_id).await;
    assert_eq!((row.refresh_generation, row.revoked_at), (1, None));
    // Our retry started a new refresh family: the rival's refresh token is
    // refused, and that is no reuse (nothing is revoked).
    let refused = x.redeem(&presented(&theirs)).await.unwrap_err();
    assert!(refused_as_not_in_family(&refused), "{refused:?}");
    assert_eq!(stored(&f, &ours.session_id).await.revoked_at, None);
    let token = presented(&ours);
    x.rotate(x.redeem(&token).await.unwrap()).await.unwrap();
}

#[tokio::test]
async fn two_redemptions_of_one_refresh_token_are_reuse_and_revoke_the_session() {
    let f = fixture().await;
    let x = exchange(&f);
    let key = key(&f, &["read"]).await;
    let login = x.login(&key, None).await.unwrap();
    let token = presented(&login);
    // Two replicas redeem the same token: both read generation 0.
    let first = x.redeem(&token).await.unwrap();
    let second = x.redeem(&token).await.unwrap();

    let won = x.rotate(first).await.unwrap();
    assert_eq!(won.session_id, login.session_id);
    let lost = x.rotate(second).await.unwrap_err();
    assert!(matches!(lost.failure, ExchangeFailure::RefreshReused), "{lost:?}");
    assert_eq!(
        lost.key.as_ref().map(|k| &k.id),
        Some(&key.id),
        "the log names the key"
    );
    assert_eq!(conflicts(&f), 1, "the second rotation lost its conditional write");
    let row = stored(&f, &login.session_id).await;
    assert!(row.revoked_at.is_some());
    assert_eq!(row.revoked_reason, Some(RevokeReason::RefreshReuse));
    // The winner's new token dies with the session.
    let refused = x.redeem(&presented(&won)).await.unwrap_err();
    assert!(refused_as_revoked(&refused), "{refused:?}");
}

#[tokio::test]
async fn a_spent_refresh_token_presented_again_revokes_the_session_at_once() {
    let f = fixture().await;
    let x = exchange(&f);
    let key = key(&f, &["read"]).await;
    let login = x.login(&key, None).await.unwrap();
    let spent = presented(&login);
    let rotated = x.rotate(x.redeem(&spent).await.unwrap()).await.unwrap();
    let saves_before = saves(&f);

    let reused = x.redeem(&spent).await.unwrap_err();
    assert!(
        matches!(reused.failure, ExchangeFailure::RefreshReused),
        "{reused:?}"
    );
    assert_eq!(saves(&f), saves_before, "reuse revokes; it writes no rotation");
    let row = stored(&f, &login.session_id).await;
    assert_eq!(row.revoked_reason, Some(RevokeReason::RefreshReuse));
    assert_eq!(row.refresh_generation, 1);
    let refused = x.redeem(&presented(&rotated)).await.unwrap_err();
    assert!(refused_as_revoked(&refused), "{refused:?}");
}

#[tokio::test]
async fn a_rotation_that_loses_to_a_login_refuses_the_token_without_revoking() {
    let f = fixture().await;
    let x = exchange(&f);
    let key = key(&f, &["read"]).await;
    let login = x.login(&key, None).await.unwrap();
    let token = presented(&login);
    let redeemed = x.redeem(&token).await.unwrap();
    // A login of the same session (a new refresh family) commits before
    // the rotation is written.
    let relogin = x.login(&key, None).await.unwrap();
    assert_eq!(relogin.session_id, login.session_id);

    let refused = x.rotate(redeemed).await.unwrap_err();
    assert!(refused_as_not_in_family(&refused), "{refused:?}");
    assert_eq!(conflicts(&f), 1);
    let row = stored(&f, &login.session_id).await;
    assert_eq!(row.revoked_at, None, "a login is no sign of theft");
    assert_eq!(row.refresh_generation, 1, "the login's write stands");
    x.rotate(x.redeem(&presented(&relogin)).await.unwrap())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_rotation_that_loses_to_an_admin_revocation_stays_revoked_by_the_admin() {
    let f = fixture().await;
    let x = exchange(&f);
    let key = key(&f, &["read"]).await;
    let login = x.login(&key, None).await.unwrap();
    let token = presented(&login);
    let redeemed = x.redeem(&token).await.unwrap();
    f.store
        .revoke_session(
            &login.session_id,
            RevokeReason::Admin,
            f.clock.now(),
            &Actor::cli(),
        )
        .await
        .unwrap();

    let refused = x.rotate(redeemed).await.unwrap_err();
    assert!(refused_as_revoked(&refused), "{refused:?}");
    assert_eq!(conflicts(&f), 1);
    let row = stored(&f, &login.session_id).await;
    assert_eq!(row.revoked_reason, Some(RevokeReason::Admin));
    assert_eq!(row.refresh_generation, 0, "nothing rotated");
}

#[tokio::test]
async fn lost_writes_are_retried_then_given_up_as_contended() {
    let f = fixture().await;
    let x = exchange(&f);
    let key = key(&f, &["read"]).await;

    // One lost write: read again, decide again, win.
    f.store.lose_saves.store(1, Ordering::SeqCst);
    let login = x.login(&key, None).await.unwrap();
    assert_eq!((saves(&f), conflicts(&f)), (2, 1));

    // Every write lost: exactly MAX_ATTEMPTS tries, nothing written.
    f.store.lose_saves.store(MAX_ATTEMPTS, Ordering::SeqCst);
    let other = x.login(&key, Some("other".into())).await.unwrap_err();
    assert!(matches!(other.failure, ExchangeFailure::Contended), "{other:?}");
    assert_eq!(saves(&f), 2 + MAX_ATTEMPTS);
    assert!(
        f.store
            .session_for(&key.id, Some("other"))
            .await
            .unwrap()
            .is_none()
    );

    // A refresh the same: a spurious loss is retried (a re-read of an
    // unchanged row redeems again, it is not reuse) ...
    let token = presented(&login);
    f.store.lose_saves.store(1, Ordering::SeqCst);
    let rotated = x.rotate(x.redeem(&token).await.unwrap()).await.unwrap();
    assert_eq!(stored(&f, &login.session_id).await.refresh_generation, 1);
    // ... and endless losses give up with the key named, nothing written.
    let token = presented(&rotated);
    let before = saves(&f);
    f.store.lose_saves.store(MAX_ATTEMPTS, Ordering::SeqCst);
    let contended = x.rotate(x.redeem(&token).await.unwrap()).await.unwrap_err();
    assert!(
        matches!(contended.failure, ExchangeFailure::Contended),
        "{contended:?}"
    );
    assert_eq!(contended.key.as_ref().map(|k| &k.id), Some(&key.id));
    assert_eq!(saves(&f) - before, MAX_ATTEMPTS);
    let row = stored(&f, &login.session_id).await;
    assert_eq!((row.refresh_generation, row.revoked_at), (1, None));
    x.rotate(x.redeem(&token).await.unwrap()).await.unwrap();
}

#[tokio::test]
async fn a_refresh_checks_its_token_before_the_keys_state_and_refuses_as_the_gate_does() {
    let f = fixture().await;
    let x = exchange(&f);
    let key = key(&f, &["read"]).await;
    let first = x.login(&key, None).await.unwrap();
    let current = x.login(&key, None).await.unwrap();
    f.manager
        .set_status(key.id.as_str(), KeyStatus::Inactive, &Actor::cli())
        .await
        .unwrap();

    // A token of a replaced family says nothing about the key.
    let stale = x.redeem(&presented(&first)).await.unwrap_err();
    assert!(refused_as_not_in_family(&stale), "{stale:?}");
    // The current token meets the key's state, mapped by AuthFailure::of_state.
    let inactive = x.redeem(&presented(&current)).await.unwrap_err();
    match &inactive.failure {
        ExchangeFailure::KeyRefused(error) => {
            assert_eq!(error.failure, AuthFailure::Inactive);
            assert_eq!(error.short_prefix.as_deref(), Some(key.short_prefix.as_str()));
        }
        other => panic!("{other:?}"),
    }
    f.manager
        .set_status(key.id.as_str(), KeyStatus::Revoked, &Actor::cli())
        .await
        .unwrap();
    let revoked = x.redeem(&presented(&current)).await.unwrap_err();
    assert!(
        matches!(
            revoked.failure,
            ExchangeFailure::KeyRefused(AuthError {
                failure: AuthFailure::Invalid(crate::auth::InvalidReason::Revoked),
                ..
            })
        ),
        "{revoked:?}"
    );
    let row = stored(&f, &current.session_id).await;
    assert_eq!(
        (row.refresh_generation, row.revoked_at),
        (1, None),
        "nothing written"
    );
}

#[tokio::test]
async fn client_credentials_keep_one_session_per_scope_set_and_no_refresh_token() {
    let f = fixture().await;
    let x = exchange(&f);
    let key = key(&f, &["read", "write"]).await;
    let read: BTreeSet<String> = ["read".to_owned()].into();
    let a = x.client_credentials(&key, read.clone()).await.unwrap();
    let b = x.client_credentials(&key, read.clone()).await.unwrap();
    let both = x.client_credentials(&key, key.scopes.clone()).await.unwrap();
    assert!(a.refresh.is_none() && b.refresh.is_none());
    assert_eq!(
        (a.session_id == b.session_id, a.session_id == both.session_id),
        (true, false)
    );
    assert_eq!(a.scope, read);
    assert_eq!(
        a.access.expose(),
        b.access.expose(),
        "the session's token comes back"
    );
    let row = stored(&f, &a.session_id).await;
    assert_eq!(row.client_session.as_deref(), Some("oauth:read"));
    assert_eq!(
        stored(&f, &both.session_id).await.client_session.as_deref(),
        Some("oauth:read write")
    );
}
