//! Read-only transactions served from a store view, without the log (etcd
//! serves a transaction whose every operation is a range the same way).

use super::MvccStore;
use crate::error::ReadTxnError;
use crate::request::{RequestOp, TxnRequest};
use crate::response::{ResponseHeader, ResponseOp, TxnResponse};
use crate::txn;
use crate::write::{set_headers, History};
use alloc::vec::Vec;

impl MvccStore {
    /// Serves a read-only transaction (see [`TxnRequest::is_read_only`])
    /// against this store as it is: every compare and every range sees the
    /// same revision, and the answer is exactly what
    /// [`apply`](Self::apply) of `Command::Txn(t)` would give (header
    /// revision = the current revision, which does not move), or the same
    /// [`RequestError`](crate::RequestError) as
    /// [`ReadTxnError::Refused`]. A transaction with a write is
    /// [`ReadTxnError::Writes`].
    ///
    /// Cost: the compares and the ranges that run, as through the log.
    pub fn read_txn(&self, t: &TxnRequest) -> Result<TxnResponse, ReadTxnError> {
        if !t.is_read_only() {
            return Err(ReadTxnError::Writes);
        }
        t.validate().map_err(ReadTxnError::Refused)?;
        let map = &self.current.map;
        let mut path = Vec::new();
        txn::decide(map, t, &|k| self.leases.lease_of(k), &mut path);
        let start = self.revision();
        let compact_revision = self.compact_revision();
        txn::check_branch(map, t, &path, start, &mut |requested, wrote| {
            self.past
                .check_txn_range(requested, start, wrote, compact_revision)
        })
        .map_err(ReadTxnError::Refused)?;
        let mut next = 0;
        let mut resp = self.read_branch(t, &path, &mut next, start);
        let header = ResponseHeader { revision: start };
        set_headers(&mut resp.responses, header);
        resp.header = header;
        Ok(resp)
    }

    /// The ranges of the branch of `t` that `path[*next]` names, nested
    /// transactions included, all at `start`.
    fn read_branch(
        &self,
        t: &TxnRequest,
        path: &[bool],
        next: &mut usize,
        start: i64,
    ) -> TxnResponse {
        let succeeded = path.get(*next).copied().unwrap_or(false);
        let ops = txn::path_branch(t, path, next);
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            match op {
                RequestOp::Range(r) => responses.push(ResponseOp::Range(self.past.txn_range(
                    &self.current.map,
                    r,
                    start,
                ))),
                #[cfg(feature = "nested-txn")]
                RequestOp::Txn(inner) => {
                    responses.push(ResponseOp::Txn(self.read_branch(inner, path, next, start)))
                }
                // Refused by `is_read_only` before.
                RequestOp::Put(_) | RequestOp::DeleteRange(_) => {
                    debug_assert!(false, "a write in a read-only transaction")
                }
            }
        }
        TxnResponse {
            header: ResponseHeader::default(),
            succeeded,
            responses,
        }
    }
}
