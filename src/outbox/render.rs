//! The email templates: `templates/email/NAME.txt.tera` (its first line `Subject: …`) and
//! `NAME.html.tera`, autoescaped so that values from forms never become markup.

use std::path::Path;

use super::OutboxError;

/// A rendered email: the first line of the plain-text template is `Subject: …`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedMail {
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// The email templates (`templates/email/NAME.txt.tera` and `NAME.html.tera`).
pub struct Renderer {
    tera: tera::Tera,
}

impl Renderer {
    pub fn load(templates_dir: &Path) -> Result<Self, OutboxError> {
        let glob = format!("{}/email/**/*.tera", templates_dir.display());
        let mut tera = tera::Tera::new(&glob).map_err(|e| OutboxError::Templates {
            dir: templates_dir.display().to_string(),
            message: format!("{e:?}"),
        })?;
        // Tera escapes by file ending; ours end in `.tera`, so name the HTML ones. Values from
        // forms and caseworkers must never become markup.
        tera.autoescape_on(vec![".html.tera"]);
        Ok(Renderer { tera })
    }

    /// Every template's name (`acknowledgement`, `reminder`...), in order.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .tera
            .get_template_names()
            .filter_map(|name| name.strip_suffix(".txt.tera"))
            .map(str::to_string)
            .collect();
        names.sort();
        names
    }

    pub fn render(&self, template: &str, context: &serde_json::Value) -> Result<RenderedMail, OutboxError> {
        let failed = |e: tera::Error| {
            let mut message = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                message.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            OutboxError::Render {
                template: template.to_string(),
                message,
            }
        };
        let mut ctx = tera::Context::from_value(context.clone()).map_err(failed)?;
        let plain = self
            .tera
            .render(&format!("{template}.txt.tera"), &ctx)
            .map_err(failed)?;
        let (first, rest) = plain.split_once('\n').unwrap_or((plain.as_str(), ""));
        let subject = first
            .strip_prefix("Subject:")
            .map(str::trim)
            .unwrap_or("Countersign")
            .to_string();
        // A caseworker's own words, when they edited the email before it went.
        let text = match context.get("body_override").and_then(|b| b.as_str()) {
            Some(own) if !own.trim().is_empty() => own.trim().to_string() + "\n",
            _ => rest.trim().to_string() + "\n",
        };
        ctx.insert("subject", &subject);
        ctx.insert("plain", &text);
        let html = self
            .tera
            .render(&format!("{template}.html.tera"), &ctx)
            .map_err(failed)?;
        Ok(RenderedMail { subject, text, html })
    }
}
