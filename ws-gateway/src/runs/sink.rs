//! The [`RunSink`] of a detached run: every step goes into the run's journal, and from there
//! to whoever follows the run. A run never finds its client gone; it waits only while the
//! journal is full of records an attached client has not read yet.

use std::sync::Arc;

use async_trait::async_trait;

use crate::{
    agent::{Gone, RunSink, Step},
    journal::{Entry, RunJournal},
};

#[derive(Debug)]
pub struct JournalSink {
    journal: Arc<RunJournal>,
}

impl JournalSink {
    pub fn new(journal: Arc<RunJournal>) -> Self {
        Self { journal }
    }
}

#[async_trait]
impl RunSink for JournalSink {
    async fn deliver(&self, step: Step) -> Result<(), Gone> {
        let entry = match step {
            Step::Event(event) => Entry::Event(event),
            Step::Denied { tool, denial } => Entry::Denied(denial.reply(&tool)),
        };
        self.journal.append(entry).await;
        Ok(())
    }
}
