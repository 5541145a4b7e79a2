//! How well a workflow's declared rules sort plain emails: a labelled set of messages (TOML,
//! `[[message]]` with `expected`, `from`, `subject`, `body`) run through the workflow's
//! recogniser and classifier, the same calls intake makes, with precision and recall per
//! class. (One workflow's rules alone: in intake, a workflow of higher priority whose
//! recogniser also fits would take the message first.) `countersign workflows evaluate` prints
//! it; the tests hold the shipped rules to it.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::WorkflowDef;
use super::email::EmailText;

/// A labelled set of messages, as written in its file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelledSet {
    pub message: Vec<LabelledMessage>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelledMessage {
    /// The class a caseworker would choose, or the classifier's `unknown` answer.
    pub expected: String,
    pub from: String,
    pub subject: String,
    pub body: String,
}

/// One class's figures: how often it was answered rightly, wrongly, and missed.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ClassFigures {
    pub class: String,
    pub expected: usize,
    pub true_positives: usize,
    pub false_positives: usize,
    pub false_negatives: usize,
}

impl ClassFigures {
    /// Of the times the rules said this class, the share that were right (1 when never said).
    pub fn precision(&self) -> f64 {
        ratio(self.true_positives, self.true_positives + self.false_positives)
    }

    /// Of the messages of this class, the share the rules found.
    pub fn recall(&self) -> f64 {
        ratio(self.true_positives, self.true_positives + self.false_negatives)
    }
}

fn ratio(part: usize, whole: usize) -> f64 {
    if whole == 0 { 1.0 } else { part as f64 / whole as f64 }
}

/// What the rules made of a labelled set.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Evaluation {
    pub workflow: String,
    pub total: usize,
    /// The answer was the expected one: the right reply proposed, or none when none fits.
    pub right: usize,
    /// A class was proposed, and it was the wrong one (or one was proposed where none fits):
    /// the costly mistake.
    pub wrong_guesses: usize,
    /// No class was proposed for a message that has one: a caseworker chooses.
    pub unknown_for_known: usize,
    /// The workflow did not take the message at all (it would open an unclassified case).
    pub not_taken: usize,
    pub per_class: Vec<ClassFigures>,
    /// Every message not answered as expected: (number in the file, from 1; expected; answer).
    pub mistakes: Vec<(usize, String, String)>,
}

impl Evaluation {
    /// The share of messages answered as expected.
    pub fn accuracy(&self) -> f64 {
        ratio(self.right, self.total)
    }

    /// The share of messages that got a wrong proposal.
    pub fn wrong_guess_rate(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            ratio(self.wrong_guesses, self.total)
        }
    }

    /// The figures as the command prints them.
    pub fn report(&self) -> String {
        let mut out = format!(
            "workflow {}: {} labelled messages\n\n{:<24} {:>8} {:>9} {:>7}\n",
            self.workflow, self.total, "class", "messages", "precision", "recall"
        );
        for c in &self.per_class {
            out.push_str(&format!(
                "{:<24} {:>8} {:>8.0}% {:>6.0}%\n",
                c.class,
                c.expected,
                c.precision() * 100.0,
                c.recall() * 100.0
            ));
        }
        out.push_str(&format!(
            "\nrouted to the right reply (or rightly to none): {}/{} = {:.1}%\nwrong reply proposed: {} ({:.1}%)\nno reply proposed where one fits: {}\nnot taken by the workflow at all: {}\n",
            self.right,
            self.total,
            self.accuracy() * 100.0,
            self.wrong_guesses,
            self.wrong_guess_rate() * 100.0,
            self.unknown_for_known,
            self.not_taken
        ));
        if !self.mistakes.is_empty() {
            out.push_str("\nnot as expected:\n");
            for (number, expected, answer) in &self.mistakes {
                out.push_str(&format!("  message {number}: expected {expected}, answered {answer}\n"));
            }
        }
        out
    }
}

/// Why a labelled set cannot be evaluated against a workflow.
#[derive(Debug, thiserror::Error)]
pub enum EvaluateError {
    #[error(
        "workflow `{0}` does not take plain emails, or does not sort them into classes (`[recognise.email]` and `[classify]`)"
    )]
    NotAClassifyingWorkflow(String),
    #[error("message {number} expects `{expected}`, which is not one of the workflow's classes nor `{unknown}`")]
    UnknownLabel {
        number: usize,
        expected: String,
        unknown: String,
    },
}

/// Runs every message of `set` through `workflow`'s recogniser and classifier.
pub fn evaluate(workflow: &WorkflowDef, set: &LabelledSet) -> Result<Evaluation, EvaluateError> {
    let (Some(recogniser), Some(classifier)) = (workflow.email_recognition(), workflow.classify.as_ref()) else {
        return Err(EvaluateError::NotAClassifyingWorkflow(workflow.name.clone()));
    };
    let unknown = classifier.unknown.as_str();
    let mut figures: BTreeMap<&str, ClassFigures> = classifier
        .classes
        .iter()
        .map(|c| {
            (
                c.name.as_str(),
                ClassFigures {
                    class: c.name.clone(),
                    expected: 0,
                    true_positives: 0,
                    false_positives: 0,
                    false_negatives: 0,
                },
            )
        })
        .collect();
    let mut evaluation = Evaluation {
        workflow: workflow.name.clone(),
        total: set.message.len(),
        right: 0,
        wrong_guesses: 0,
        unknown_for_known: 0,
        not_taken: 0,
        per_class: Vec::new(),
        mistakes: Vec::new(),
    };
    for (i, message) in set.message.iter().enumerate() {
        let number = i + 1;
        let expected = message.expected.as_str();
        if expected != unknown && !figures.contains_key(expected) {
            return Err(EvaluateError::UnknownLabel {
                number,
                expected: expected.to_string(),
                unknown: unknown.to_string(),
            });
        }
        let text = EmailText::new(Some(&message.from), Some(&message.subject), Some(&message.body));
        let taken = recogniser.matches(&text);
        let answer = if taken {
            classifier.classify(&text).class.unwrap_or_else(|| unknown.to_string())
        } else {
            evaluation.not_taken += 1;
            unknown.to_string()
        };
        if let Some(f) = figures.get_mut(expected) {
            f.expected += 1;
        }
        if answer == expected {
            evaluation.right += 1;
            if let Some(f) = figures.get_mut(expected) {
                f.true_positives += 1;
            }
            continue;
        }
        if let Some(f) = figures.get_mut(expected) {
            f.false_negatives += 1;
        }
        if let Some(f) = figures.get_mut(answer.as_str()) {
            f.false_positives += 1;
            evaluation.wrong_guesses += 1;
        } else {
            evaluation.unknown_for_known += 1;
        }
        let shown = if taken { answer } else { format!("{answer} (not taken)") };
        evaluation.mistakes.push((number, expected.to_string(), shown));
    }
    evaluation.per_class = figures.into_values().collect();
    Ok(evaluation)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(expected: &str, body: &str) -> LabelledMessage {
        LabelledMessage {
            expected: expected.into(),
            from: "someone@nhs.net".into(),
            subject: "CSMS access check".into(),
            body: body.into(),
        }
    }

    #[test]
    fn precision_recall_and_mistakes_are_counted_per_class() {
        let set = crate::workflow::shipped();
        let support = set.get("support").expect("the support workflow ships");
        let labelled = LabelledSet {
            message: vec![
                message("no_csms_role", "It says I do not have a valid cervical screening role."),
                message("no_workgroup", "It says I do not have a valid cervical screening role."),
                message("forgotten_passcode", "Thanks, it all worked."),
                message("unknown", "Thanks, it all worked."),
            ],
        };
        let e = evaluate(support, &labelled).unwrap();
        assert_eq!((e.total, e.right, e.wrong_guesses, e.unknown_for_known), (4, 2, 1, 1));
        let role = e.per_class.iter().find(|c| c.class == "no_csms_role").unwrap();
        assert_eq!(
            (role.true_positives, role.false_positives, role.false_negatives),
            (1, 1, 0)
        );
        assert_eq!(role.precision(), 0.5);
        let workgroup = e.per_class.iter().find(|c| c.class == "no_workgroup").unwrap();
        assert_eq!(workgroup.recall(), 0.0);
        assert_eq!(e.mistakes.len(), 2);
        assert!(
            e.report()
                .contains("message 2: expected no_workgroup, answered no_csms_role")
        );
    }

    #[test]
    fn a_label_the_workflow_does_not_know_is_refused() {
        let set = crate::workflow::shipped();
        let support = set.get("support").unwrap();
        let labelled = LabelledSet {
            message: vec![message("no_such_problem", "x")],
        };
        assert!(matches!(
            evaluate(support, &labelled),
            Err(EvaluateError::UnknownLabel { number: 1, .. })
        ));
    }

    #[test]
    fn a_form_workflow_cannot_be_evaluated() {
        let set = crate::workflow::shipped();
        let gp = set.get("primary_user_gp").unwrap();
        assert!(matches!(
            evaluate(gp, &LabelledSet { message: vec![] }),
            Err(EvaluateError::NotAClassifyingWorkflow(_))
        ));
    }
}
