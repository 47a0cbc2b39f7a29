//! The request body as it goes to the upstream.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

pin_project_lite::pin_project! {
    /// A request body on its way to the upstream, counting the bytes that
    /// go through when a meter needs them (`request_bytes`).
    pub struct RequestBody {
        #[pin]
        body: hyper::body::Incoming,
        counted: Option<Arc<AtomicU64>>,
    }
}

impl RequestBody {
    pub fn new(body: hyper::body::Incoming, counted: Option<Arc<AtomicU64>>) -> RequestBody {
        RequestBody { body, counted }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        let polled = this.body.poll_frame(cx);
        if let (Some(counted), Poll::Ready(Some(Ok(frame)))) = (this.counted.as_ref(), &polled) {
            if let Some(data) = frame.data_ref() {
                counted.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
