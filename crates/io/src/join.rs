//! Running a few futures of one task concurrently, without spawning (libraries do not spawn,
//! STYLE.md §1): [`try_join_all`] polls them all and returns at the first error, dropping the
//! rest.

use std::future::poll_fn;
use std::task::Poll;

use crate::BoxFuture;

/// Waits for every future; the first error wins and the others are dropped (cancelled).
/// Results come back in input order.
///
/// # Errors
/// The first error any future returns.
pub async fn try_join_all<'a, T, E>(
    futures: Vec<BoxFuture<'a, Result<T, E>>>,
) -> Result<Vec<T>, E> {
    let mut pending: Vec<Option<BoxFuture<'a, Result<T, E>>>> =
        futures.into_iter().map(Some).collect();
    let mut done: Vec<Option<T>> = pending.iter().map(|_| None).collect();
    let mut left = pending.len();
    poll_fn(|cx| {
        for (slot, out) in pending.iter_mut().zip(done.iter_mut()) {
            let Some(fut) = slot else { continue };
            if let Poll::Ready(result) = fut.as_mut().poll(cx) {
                *slot = None;
                left -= 1;
                match result {
                    Ok(v) => *out = Some(v),
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
        }
        if left == 0 {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    })
    .await?;
    Ok(done.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn try_join_all_all_ok_keeps_order() {
        let futs: Vec<BoxFuture<'_, Result<u32, ()>>> = (0..5u32)
            .map(|i| -> BoxFuture<'_, Result<u32, ()>> {
                Box::pin(async move {
                    tokio::task::yield_now().await;
                    Ok(i)
                })
            })
            .collect();

        assert_eq!(try_join_all(futs).await, Ok(vec![0, 1, 2, 3, 4]));
    }

    #[tokio::test]
    async fn try_join_all_error_stops_early() {
        let futs: Vec<BoxFuture<'_, Result<u32, &str>>> = vec![
            Box::pin(std::future::pending()),
            Box::pin(async { Err("boom") }),
        ];

        assert_eq!(try_join_all(futs).await, Err("boom"));
    }

    #[tokio::test]
    async fn try_join_all_runs_futures_concurrently() {
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let futs: Vec<BoxFuture<'_, Result<u32, ()>>> = vec![
            Box::pin(async move { rx.await.map_err(|_| ()) }),
            Box::pin(async move {
                tx.send(7).map_err(|_| ())?;
                Ok(1)
            }),
        ];
        assert_eq!(try_join_all(futs).await, Ok(vec![7, 1]));
    }
}
