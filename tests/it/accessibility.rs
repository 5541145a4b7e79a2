//! Accessibility checks that can be made without a person: the palette meets WCAG 2.2 AA
//! contrast (4.5:1 for text), and every visible form control on the main pages has a label.

fn luminance(hex: &str) -> f64 {
    let hex = hex.trim_start_matches('#');
    let channel = |i: usize| {
        let c = u8::from_str_radix(&hex[i..i + 2], 16).unwrap() as f64 / 255.0;
        if c <= 0.03928 {
            c / 12.92
        } else {
            ((c + 0.055) / 1.055).powf(2.4)
        }
    };
    0.2126 * channel(0) + 0.7152 * channel(2) + 0.0722 * channel(4)
}

fn contrast(a: &str, b: &str) -> f64 {
    let (la, lb) = (luminance(a), luminance(b));
    (la.max(lb) + 0.05) / (la.min(lb) + 0.05)
}

/// The CSS custom properties of the stylesheet, by name.
fn palette() -> std::collections::BTreeMap<String, String> {
    let css = std::fs::read_to_string(crate::common::root().join("templates/ui/app.css")).unwrap();
    let root = &css[css.find(":root").unwrap()..];
    let root = &root[root.find('{').unwrap() + 1..root.find('}').unwrap()];
    root.split(';')
        .filter_map(|decl| {
            let (name, value) = decl.split_once(':')?;
            let name = name.trim().trim_start_matches("--").to_string();
            Some((name, value.trim().to_string()))
        })
        .collect()
}

#[test]
fn text_and_background_pairs_meet_wcag_aa_contrast() {
    let p = palette();
    assert!(p.contains_key("text") && p.contains_key("focus"), "{p:?}");
    let white = "#ffffff".to_string();
    let pairs = [
        ("text", "white", &p["text"], &white),
        ("text on grey", "grey-5", &p["text"], &p["grey-5"]),
        ("secondary text", "white", &p["secondary"], &white),
        ("secondary text on grey", "grey-5", &p["secondary"], &p["grey-5"]),
        ("links", "white", &p["blue"], &white),
        ("header text", "blue", &white, &p["blue"]),
        ("primary button", "green", &white, &p["green"]),
        ("warning button", "red", &white, &p["red"]),
        ("on-track tag", "white", &p["green"], &white),
        ("error text", "white", &p["red"], &white),
        ("breached tag", "red", &white, &p["red"]),
    ];
    for (what, on, fg, bg) in pairs {
        let ratio = contrast(fg, bg);
        assert!(ratio >= 4.5, "{what} on {on}: {ratio:.2}:1 is below 4.5:1");
    }
    // The at-risk tag's colours are set in the rule itself.
    assert!(contrast("#6b4800", "#fff3cd") >= 4.5);
    // Focus: the yellow outline against the dark text it sits on (non-text contrast, 3:1).
    assert!(contrast(&p["focus"], &p["text"]) >= 3.0);
}

#[test]
fn the_contrast_check_itself_is_right() {
    assert!((contrast("#000000", "#ffffff") - 21.0).abs() < 0.01);
    assert!((contrast("#777777", "#ffffff") - 4.48).abs() < 0.02);
}

/// Every visible input, select and textarea in the page templates has a label (`for` its id)
/// or an `aria-label`.
#[test]
fn every_form_control_in_the_page_templates_is_labelled() {
    let dir = crate::common::root().join("templates/ui");
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        let html = std::fs::read_to_string(entry.path()).unwrap();
        let mut rest = html.as_str();
        while let Some(start) = ["<input", "<select", "<textarea"]
            .iter()
            .filter_map(|tag| rest.find(tag))
            .min()
        {
            let end = rest[start..].find('>').unwrap() + start;
            let tag = &rest[start..=end];
            rest = &rest[end..];
            if tag.contains("type=\"hidden\"") || tag.contains("aria-label=") {
                continue;
            }
            let id_at = tag.find(" id=\"").unwrap_or_else(|| {
                panic!(
                    "{}: a control without an id or aria-label: {tag}",
                    entry.path().display()
                )
            });
            let id = &tag[id_at + 5..];
            let id = &id[..id.find('"').unwrap()];
            assert!(
                html.contains(&format!("for=\"{id}\"")),
                "{}: no label for {id}",
                entry.path().display()
            );
        }
    }
}
