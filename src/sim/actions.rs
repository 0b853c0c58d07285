//! What the simulated accounts do: writes, handle and status changes, syncs, key rotations and
//! migrations, each emitting what a real PDS emits.

use super::*;

impl World {
    /// Commits writes for an account and emits the `#commit`.
    pub fn write(&self, did: &str, writes: &[Write]) -> Result<Cid, SimError> {
        let a = self.account_by_did(did)?;
        let mut a = lock(&a);
        if a.status != Status::Active {
            return Err(SimError::Inactive(did.to_owned()));
        }
        let time = self.time_now();
        let c = a.repo.commit(writes, &time)?;
        for w in writes {
            match w {
                Write::Create { path, .. } => a.paths.push(path.clone()),
                Write::Delete { path } => a.paths.retain(|p| p != path),
                Write::Update { .. } => {}
            }
        }
        a.repo.gc();
        let cid = c.commit;
        let host = a.host;
        drop(a);
        self.emit(Planned::Valid(host, Event::Commit(c)));
        Ok(cid)
    }

    /// A commit emitted even though the account is not active at its PDS (a misbehaving PDS).
    /// Relays must drop it, so it is not in the ledger.
    pub fn force_commit(&self, did: &str) -> Result<Cid, SimError> {
        let a = self.account_by_did(did)?;
        let mut a = lock(&a);
        let rkey = a.next_rkey();
        let path = format!("app.bsky.feed.post/{rkey}");
        let c = a.repo.commit(
            &[Write::Create {
                path: path.clone(),
                record: traffic::post("while inactive", &self.time_now()),
            }],
            &self.time_now(),
        )?;
        a.paths.push(path);
        let (cid, host) = (c.commit, a.host);
        drop(a);
        self.emit(Planned::Defect(host, Event::Commit(c)));
        Ok(cid)
    }

    /// A new post; returns its path.
    pub fn post(&self, did: &str, text: &str) -> Result<String, SimError> {
        let a = self.account_by_did(did)?;
        let rkey = lock(&a).next_rkey();
        let path = format!("app.bsky.feed.post/{rkey}");
        self.write(
            did,
            &[Write::Create {
                path: path.clone(),
                record: traffic::post(text, &self.time_now()),
            }],
        )?;
        Ok(path)
    }

    /// Changes the handle (PLC document first, then `#identity`).
    pub fn set_handle(&self, did: &str, handle: &str) -> Result<(), SimError> {
        let a = self.account_by_did(did)?;
        let mut a = lock(&a);
        a.handle = handle.to_owned();
        self.plc.set(did, self.document(&a));
        let host = a.host;
        drop(a);
        self.emit(Planned::Valid(
            host,
            Event::Identity(IdentityEvent {
                seq: 0,
                did: did.to_owned(),
                time: self.time_now(),
                handle: Some(handle.to_owned()),
            }),
        ));
        Ok(())
    }

    /// Emits `#account` for a status change at the PDS (a deletion also tombstones the DID).
    pub fn set_status(&self, did: &str, status: Status) -> Result<(), SimError> {
        let a = self.account_by_did(did)?;
        let mut a = lock(&a);
        a.status = status;
        if status == Status::Deleted {
            self.plc.tombstone(did);
        }
        let host = a.host;
        drop(a);
        let (active, st) = status.wire();
        self.emit(Planned::Valid(
            host,
            Event::Account(AccountEvent {
                seq: 0,
                did: did.to_owned(),
                time: self.time_now(),
                active,
                status: st.map(str::to_owned),
            }),
        ));
        Ok(())
    }

    /// A `#sync` announcing the current repo state under a fresh rev.
    pub fn sync(&self, did: &str) -> Result<(), SimError> {
        let a = self.account_by_did(did)?;
        let mut a = lock(&a);
        a.repo.resign();
        let time = self.time_now();
        let ev = a.repo.sync_event(&time);
        let host = a.host;
        drop(a);
        if let Some(s) = ev {
            self.emit(Planned::Valid(host, Event::Sync(s)));
        }
        Ok(())
    }

    /// Rotates the account's signing key in the PLC document (no event: a PDS follows a
    /// rotation with a commit signed by the new key).
    pub fn rotate_key(&self, did: &str) -> Result<(), SimError> {
        let a = self.account_by_did(did)?;
        let mut a = lock(&a);
        a.key_version += 1;
        let key = PrivateKey::from_seed(a.curve, format!("{did}#{}", a.key_version).as_bytes());
        a.repo.set_key(key);
        self.plc.set(did, self.document(&a));
        Ok(())
    }

    /// Moves an account to another host as a migration does: new key and PDS in the PLC
    /// document, then the new host emits `#identity`, `#account` (active) and a `#sync` signed by
    /// the new key, and the old host reports the account deactivated.
    pub fn migrate(&self, did: &str, to: usize) -> Result<(), SimError> {
        let a = self.account_by_did(did)?;
        let mut a = lock(&a);
        let from = a.host;
        a.host = to;
        a.key_version += 1;
        let key = PrivateKey::from_seed(a.curve, format!("{did}#{}", a.key_version).as_bytes());
        a.repo.set_key(key);
        self.plc.set(did, self.document(&a));
        a.repo.resign();
        let t = self.time_now();
        let sync = a.repo.sync_event(&t);
        drop(a);
        self.emit(Planned::Valid(
            to,
            Event::Identity(IdentityEvent {
                seq: 0,
                did: did.to_owned(),
                time: self.time_now(),
                handle: None,
            }),
        ));
        self.emit(Planned::Valid(
            to,
            Event::Account(AccountEvent {
                seq: 0,
                did: did.to_owned(),
                time: self.time_now(),
                active: true,
                status: None,
            }),
        ));
        if let Some(s) = sync {
            self.emit(Planned::Valid(to, Event::Sync(s)));
        }
        // The old host's view; a relay must ignore it (wrong host). Not in the ledger.
        self.emit(Planned::Defect(
            from,
            Event::Account(AccountEvent {
                seq: 0,
                did: did.to_owned(),
                time: self.time_now(),
                active: false,
                status: Some("deactivated".into()),
            }),
        ));
        Ok(())
    }
}
