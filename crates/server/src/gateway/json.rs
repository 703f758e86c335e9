//! JSON bodies for the gateway: parsing requests (whole or as a stream of
//! objects), writing streaming answers, and grpc-gateway's error mapping.

// tonic's `Status` is the gateway's error currency; it is large by design.
#![allow(clippy::result_large_err)]

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_stream::{Stream, StreamExt};
use tonic::{Code, Status};

/// Parses a whole request body; an empty body is the default request (as
/// grpc-gateway reads it).
pub(super) fn parse_body<T: DeserializeOwned + Default>(
    body: &[u8],
    limit: usize,
) -> Result<T, Status> {
    if body.len() > limit {
        return Err(Status::invalid_argument(format!(
            "request body of {} bytes is larger than {limit}",
            body.len()
        )));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| Status::invalid_argument(e.to_string()))
}

/// Decodes a body that carries a sequence of JSON objects, yielding each as
/// soon as it is complete. A malformed object, or one larger than `limit`,
/// ends the stream with an error.
pub(super) fn request_stream<T>(
    body: Body,
    limit: usize,
) -> impl Stream<Item = Result<T, Status>> + Send + Unpin + 'static
where
    T: DeserializeOwned + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        let mut chunks = body.into_data_stream();
        let mut buf: Vec<u8> = Vec::new();
        loop {
            // Yield every complete object in the buffer.
            loop {
                let mut it = serde_json::Deserializer::from_slice(&buf).into_iter::<T>();
                match it.next() {
                    Some(Ok(v)) => {
                        let used = it.byte_offset();
                        buf.drain(..used);
                        if tx.send(Ok(v)).await.is_err() {
                            return;
                        }
                    }
                    Some(Err(e)) if e.is_eof() => break,
                    Some(Err(e)) => {
                        let _ = tx.send(Err(Status::invalid_argument(e.to_string()))).await;
                        return;
                    }
                    None => {
                        buf.clear();
                        break;
                    }
                }
            }
            if buf.len() > limit {
                let _ = tx
                    .send(Err(Status::invalid_argument(format!(
                        "request larger than {limit} bytes"
                    ))))
                    .await;
                return;
            }
            match chunks.next().await {
                Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                // The client finished sending (or went away): the answer
                // stream goes on until the client stops reading.
                Some(Err(_)) | None => return,
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// One `{"result": …}` line per message; an error ends the stream with
/// grpc-gateway's streaming error object.
pub(super) fn streaming_response<S, T>(responses: S) -> Response
where
    S: Stream<Item = Result<T, Status>> + Send + 'static,
    T: Serialize + Send + 'static,
{
    let lines = responses.map(|item| {
        let line = match item {
            Ok(msg) => serde_json::to_vec(&serde_json::json!({ "result": msg })),
            Err(status) => serde_json::to_vec(&serde_json::json!({
                "error": {
                    "grpc_code": status.code() as i32,
                    "http_code": http_status(status.code()).as_u16(),
                    "message": status.message(),
                    "http_status": http_status(status.code()).canonical_reason().unwrap_or(""),
                }
            })),
        };
        let mut bytes = line.unwrap_or_else(|_| b"{}".to_vec());
        bytes.push(b'\n');
        Ok::<Bytes, Infallible>(Bytes::from(bytes))
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(lines),
    )
        .into_response()
}

/// grpc-gateway's error object for a failed unary call, its fields in
/// grpc-gateway's order (`error`, `message`, `code`).
#[derive(Debug, serde::Serialize)]
pub struct ErrorBody<'a> {
    /// The gRPC message.
    pub error: &'a str,
    /// The gRPC message again.
    pub message: &'a str,
    /// The gRPC code's number.
    pub code: i32,
}

/// grpc-gateway's error object for a failed unary call.
pub fn error_body(status: &Status) -> ErrorBody<'_> {
    ErrorBody {
        error: status.message(),
        message: status.message(),
        code: status.code() as i32,
    }
}

/// The HTTP status grpc-gateway answers for a gRPC code.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::etcdserverpb as pb;

    #[test]
    fn bodies_use_protobuf_json_with_original_names() {
        let r: pb::RangeRequest = parse_body(
            br#"{"key":"Zm9v","range_end":"Zm9w","limit":"5","serializable":true}"#,
            1 << 20,
        )
        .unwrap();
        assert_eq!(r.key, b"foo");
        assert_eq!(r.range_end, b"fop");
        assert_eq!(r.limit, 5);
        assert!(r.serializable);
        // camelCase is accepted too, numbers as numbers.
        let r: pb::RangeRequest =
            parse_body(br#"{"key":"Zm9v","rangeEnd":"Zm9w","limit":5}"#, 1 << 20).unwrap();
        assert_eq!(r.range_end, b"fop");
        assert_eq!(r.limit, 5);
        let empty: pb::StatusRequest = parse_body(b"", 1 << 20).unwrap();
        assert_eq!(empty, pb::StatusRequest::default());
        let out = serde_json::to_string(&pb::ResponseHeader {
            cluster_id: 7,
            member_id: 0,
            revision: 3,
            raft_term: 2,
        })
        .unwrap();
        assert_eq!(out, r#"{"cluster_id":"7","revision":"3","raft_term":"2"}"#);
    }

    #[test]
    fn malformed_and_oversized_bodies_are_refused() {
        let bad = parse_body::<pb::RangeRequest>(b"{\"key\": 5", 1 << 20).unwrap_err();
        assert_eq!(bad.code(), Code::InvalidArgument);
        let bad = parse_body::<pb::RangeRequest>(br#"{"key":"!!!"}"#, 1 << 20).unwrap_err();
        assert_eq!(bad.code(), Code::InvalidArgument);
        let big = parse_body::<pb::RangeRequest>(&[b' '; 100], 10).unwrap_err();
        assert_eq!(big.code(), Code::InvalidArgument);
    }

    #[tokio::test]
    async fn a_body_of_several_objects_arrives_one_by_one() {
        let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(Bytes::from_static(
                br#"{"create_request":{"key":"YQ=="}} {"cancel_"#,
            )),
            Ok(Bytes::from_static(br#"request":{"watch_id":"3"}}"#)),
        ];
        let body = Body::from_stream(tokio_stream::iter(chunks));
        let got: Vec<_> = request_stream::<pb::WatchRequest>(body, 1 << 20)
            .collect()
            .await;
        assert_eq!(got.len(), 2);
        match &got[1] {
            Ok(pb::WatchRequest {
                request_union: Some(pb::watch_request::RequestUnion::CancelRequest(c)),
            }) => assert_eq!(c.watch_id, 3),
            other => panic!("{other:?}"),
        }
    }
}
