//! The answer log: SQLite in WAL mode with `synchronous=FULL`, so an answer is on
//! disk (the WAL fsynced) when [`AnswerDb::submit`] returns — before the next image
//! is shown. A server killed with SIGKILL loses no acknowledged answer, and the next
//! image is always recomputed from what is stored, so none is asked twice.
//!
//! ```sql
//! participants(code PRIMARY KEY, created_ms)
//! shown(code, trial_id, shown_ms, PRIMARY KEY(code, trial_id))      -- first display
//! answers(code, trial_id, position, choice, client_rt_ms, server_rt_ms, answered_ms,
//!         PRIMARY KEY(code, trial_id), UNIQUE(code, position))      -- one per image
//! ```

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};

use super::HumanError;

/// File name of the answer database inside a study directory.
pub const DB_FILE: &str = "responses.sqlite";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS participants (
    code TEXT PRIMARY KEY NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS shown (
    code TEXT NOT NULL REFERENCES participants(code),
    trial_id TEXT NOT NULL,
    shown_ms INTEGER NOT NULL,
    PRIMARY KEY (code, trial_id)
);
CREATE TABLE IF NOT EXISTS answers (
    code TEXT NOT NULL REFERENCES participants(code),
    trial_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    choice INTEGER NOT NULL,
    client_rt_ms INTEGER,
    server_rt_ms INTEGER,
    answered_ms INTEGER NOT NULL,
    PRIMARY KEY (code, trial_id),
    UNIQUE (code, position)
);
";

/// One stored answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The participant's code.
    pub code: String,
    /// The trial answered (an id of the manifest).
    pub trial_id: String,
    /// Its position in the participant's sequence (0-based).
    pub position: i64,
    /// The class chosen.
    pub choice: i64,
    /// Time from the image appearing to the click, measured in the browser.
    pub client_rt_ms: Option<i64>,
    /// Time from the server first sending the trial page to receiving the answer.
    pub server_rt_ms: Option<i64>,
    /// When the answer was stored (ms since the Unix epoch).
    pub answered_ms: i64,
}

/// One participant's progress (the admin page).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Progress {
    pub code: String,
    /// When they started (ms since the Unix epoch).
    pub created_ms: i64,
    /// Answers given.
    pub answered: i64,
    /// When they last answered.
    pub last_ms: Option<i64>,
}

/// What became of a submitted answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Submitted {
    /// Stored durably.
    Recorded,
    /// The same answer was already stored (a re-submit): nothing changed.
    Duplicate,
    /// This image already has a different answer, which stands.
    Conflict { stored_choice: i64 },
    /// Not the image the participant is at: `answered` answers are stored.
    NotNext { answered: i64 },
}

/// The answer database of one study.
pub struct AnswerDb {
    conn: Connection,
    path: PathBuf,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl AnswerDb {
    /// Opens (creating if needed) the database for writing: WAL, `synchronous=FULL`.
    pub fn open(path: &Path) -> Result<Self, HumanError> {
        let conn = Connection::open(path).map_err(|e| db_err(path, e))?;
        let db = Self {
            conn,
            path: path.to_path_buf(),
        };
        let mode: String = db
            .conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(|e| db.err(e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(HumanError::Invalid(format!(
                "{}: SQLite refused WAL mode (got {mode}); put the study on a local file system",
                path.display()
            )));
        }
        db.conn
            .execute_batch(
                "PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON; PRAGMA busy_timeout=5000;",
            )
            .map_err(|e| db.err(e))?;
        db.conn.execute_batch(SCHEMA).map_err(|e| db.err(e))?;
        Ok(db)
    }

    /// Opens an existing database read-only (the report); `None` if there is none.
    pub fn open_read_only(path: &Path) -> Result<Option<Self>, HumanError> {
        if !path.exists() {
            return Ok(None);
        }
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| db_err(path, e))?;
        Ok(Some(Self {
            conn,
            path: path.to_path_buf(),
        }))
    }

    fn err(&self, e: rusqlite::Error) -> HumanError {
        db_err(&self.path, e)
    }

    /// Adds a participant; `false` if the code exists already.
    pub fn add_participant(&self, code: &str) -> Result<bool, HumanError> {
        let n = self
            .conn
            .execute(
                "INSERT OR IGNORE INTO participants(code, created_ms) VALUES (?1, ?2)",
                params![code, now_ms()],
            )
            .map_err(|e| self.err(e))?;
        Ok(n == 1)
    }

    /// Whether `code` is a participant.
    pub fn has_participant(&self, code: &str) -> Result<bool, HumanError> {
        self.conn
            .query_row("SELECT 1 FROM participants WHERE code = ?1", [code], |_| {
                Ok(())
            })
            .optional()
            .map(|r| r.is_some())
            .map_err(|e| self.err(e))
    }

    /// How many answers `code` has given (= the position of their next image).
    pub fn answered(&self, code: &str) -> Result<i64, HumanError> {
        self.conn
            .query_row(
                "SELECT COUNT(*) FROM answers WHERE code = ?1",
                [code],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))
    }

    /// Records the first time a trial page was sent (kept on reloads).
    pub fn mark_shown(&self, code: &str, trial_id: &str) -> Result<(), HumanError> {
        self.conn
            .execute(
                "INSERT OR IGNORE INTO shown(code, trial_id, shown_ms) VALUES (?1, ?2, ?3)",
                params![code, trial_id, now_ms()],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }

    /// Stores `choice` for the trial at `position` of `code`'s sequence — only if it
    /// is the next unanswered one — in one transaction, committed (fsynced) before
    /// returning. A re-submit of a stored answer changes nothing.
    pub fn submit(
        &mut self,
        code: &str,
        trial_id: &str,
        position: i64,
        choice: i64,
        client_rt_ms: Option<i64>,
    ) -> Result<Submitted, HumanError> {
        let path = self.path.clone();
        let e = |e| db_err(&path, e);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(e)?;
        let stored: Option<i64> = tx
            .query_row(
                "SELECT choice FROM answers WHERE code = ?1 AND trial_id = ?2",
                [code, trial_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(e)?;
        if let Some(stored_choice) = stored {
            return Ok(if stored_choice == choice {
                Submitted::Duplicate
            } else {
                Submitted::Conflict { stored_choice }
            });
        }
        let answered: i64 = tx
            .query_row(
                "SELECT COUNT(*) FROM answers WHERE code = ?1",
                [code],
                |r| r.get(0),
            )
            .map_err(e)?;
        if answered != position {
            return Ok(Submitted::NotNext { answered });
        }
        let now = now_ms();
        let shown: Option<i64> = tx
            .query_row(
                "SELECT shown_ms FROM shown WHERE code = ?1 AND trial_id = ?2",
                [code, trial_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(e)?;
        tx.execute(
            "INSERT INTO answers(code, trial_id, position, choice, client_rt_ms, server_rt_ms, answered_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![code, trial_id, position, choice, client_rt_ms, shown.map(|s| now - s), now],
        )
        .map_err(e)?;
        tx.commit().map_err(e)?;
        Ok(Submitted::Recorded)
    }

    /// Every answer, by participant and position.
    pub fn answers(&self) -> Result<Vec<Answer>, HumanError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT code, trial_id, position, choice, client_rt_ms, server_rt_ms, answered_ms
                 FROM answers ORDER BY code, position",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(Answer {
                    code: r.get(0)?,
                    trial_id: r.get(1)?,
                    position: r.get(2)?,
                    choice: r.get(3)?,
                    client_rt_ms: r.get(4)?,
                    server_rt_ms: r.get(5)?,
                    answered_ms: r.get(6)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Every participant's progress, in order of arrival.
    pub fn progress(&self) -> Result<Vec<Progress>, HumanError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT p.code, p.created_ms, COUNT(a.trial_id), MAX(a.answered_ms)
                 FROM participants p LEFT JOIN answers a ON a.code = p.code
                 GROUP BY p.code ORDER BY p.created_ms, p.code",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(Progress {
                    code: r.get(0)?,
                    created_ms: r.get(1)?,
                    answered: r.get(2)?,
                    last_ms: r.get(3)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }
}

fn db_err(path: &Path, source: rusqlite::Error) -> HumanError {
    HumanError::Db {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_answer_per_image_resubmit_is_idempotent_and_order_is_enforced() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = AnswerDb::open(&dir.path().join(DB_FILE)).unwrap();
        assert!(db.add_participant("ABC").unwrap());
        assert!(!db.add_participant("ABC").unwrap());
        db.mark_shown("ABC", "t0").unwrap();
        assert_eq!(
            db.submit("ABC", "t1", 1, 3, None).unwrap(),
            Submitted::NotNext { answered: 0 }
        );
        assert_eq!(
            db.submit("ABC", "t0", 0, 3, Some(900)).unwrap(),
            Submitted::Recorded
        );
        assert_eq!(
            db.submit("ABC", "t0", 0, 3, Some(900)).unwrap(),
            Submitted::Duplicate
        );
        assert_eq!(
            db.submit("ABC", "t0", 0, 4, None).unwrap(),
            Submitted::Conflict { stored_choice: 3 }
        );
        let all = db.answers().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!((all[0].choice, all[0].client_rt_ms), (3, Some(900)));
        assert!(all[0].server_rt_ms.is_some());
        drop(db);
        // Reopened read-only, the answer is there.
        let ro = AnswerDb::open_read_only(&dir.path().join(DB_FILE))
            .unwrap()
            .unwrap();
        assert_eq!(ro.answered("ABC").unwrap(), 1);
    }
}
