//! The HTML a participant and the study owner see. Plain server-rendered pages with
//! a few lines of inline script (response time, keys 0–9, class search); every
//! dynamic string is escaped. Nothing here ever receives a label or a prediction:
//! a trial page is the same for every image apart from the image's opaque id and
//! the progress counters.

use std::fmt::Write as _;

/// Escapes text for HTML element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif;margin:0;
  background:#f4f5f7;color:#1d1f23;font-size:18px;line-height:1.45}
main{max-width:860px;margin:0 auto;padding:20px 20px 40px}
h1{font-size:28px;margin:8px 0 16px}
.card{background:#fff;border-radius:10px;padding:18px 22px;box-shadow:0 1px 3px rgba(0,0,0,.12);margin-bottom:18px}
.progress{display:flex;align-items:center;gap:14px;font-size:19px;font-weight:600}
.progress progress{flex:1;height:18px;accent-color:#2563eb}
.batch{margin:6px 0 0;color:#374151;font-size:17px}
.batch b{color:#1d4ed8}
.newbatch{background:#fef3c7;border:1px solid #f59e0b;border-radius:8px;padding:8px 12px;margin:10px 0 0}
.stage{display:flex;flex-wrap:wrap;gap:22px;align-items:flex-start;justify-content:center}
.stage img{width:min(420px,86vw);height:auto;image-rendering:pixelated;image-rendering:crisp-edges;
  border:1px solid #9ca3af;border-radius:4px;background:#fff}
.choices{display:grid;grid-template-columns:repeat(2,minmax(170px,1fr));gap:10px;flex:1;min-width:300px}
.choices button{font-size:19px;padding:12px 14px;text-align:left;border:1px solid #9ca3af;border-radius:8px;
  background:#fff;cursor:pointer;color:#111}
.choices button:hover,.choices button:focus{background:#dbeafe;border-color:#2563eb;outline:none}
.choices button:disabled{opacity:.5}
.key{display:inline-block;min-width:1.4em;text-align:center;font-family:monospace;font-weight:700;
  background:#e5e7eb;border-radius:4px;margin-right:10px;padding:0 4px}
.hint{color:#4b5563;font-size:16px}
.code{font-family:monospace;font-size:22px;font-weight:700;letter-spacing:2px;background:#eef2ff;padding:2px 8px;border-radius:4px}
.start{font-size:20px;padding:12px 26px;border-radius:8px;border:0;background:#2563eb;color:#fff;cursor:pointer}
input[type=text],input[type=password],input[type=search]{font-size:19px;padding:8px 10px;border:1px solid #9ca3af;border-radius:6px}
table{border-collapse:collapse}td,th{border-bottom:1px solid #e5e7eb;padding:6px 12px;text-align:left}
.error{color:#b91c1c;font-weight:600}
.classes{columns:2;margin:6px 0}
";

/// A whole page.
pub fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"referrer\" content=\"no-referrer\">\
         <title>{}</title><style>{STYLE}</style></head>\n<body><main>\n{body}\n</main></body></html>\n",
        esc(title)
    )
}

/// What the welcome page says about the study.
pub struct StudyInfo<'a> {
    /// Images per batch and number of batches.
    pub images: usize,
    /// Kept fractions, ascending.
    pub fractions: &'a [f64],
    /// Names of the offered classes, in button order.
    pub class_names: &'a [String],
    /// The owner's consent text.
    pub consent: &'a str,
}

/// A fraction as a percentage without trailing zeros (`0.05` → `5`).
pub fn pct(q: f64) -> String {
    let s = format!("{:.2}", q * 100.0);
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// The start page: instructions, consent, start or continue with a code.
pub fn welcome(info: &StudyInfo, error: Option<&str>) -> String {
    let batches = info.fractions.len();
    let total = info.images * batches;
    let percents: Vec<String> = info
        .fractions
        .iter()
        .map(|q| format!("{}%", pct(*q)))
        .collect();
    let mut classes = String::new();
    for name in info.class_names {
        let _ = write!(classes, "<li>{}</li>", esc(name));
    }
    let error = error
        .map(|e| format!("<p class=\"error\">{}</p>", esc(e)))
        .unwrap_or_default();
    page(
        "Image classification study",
        &format!(
            "<h1>Which object is it?</h1>\
<div class=\"card\"><p>You will classify <b>{total} images</b>, one at a time, in <b>{batches} batches</b> \
of {images}. Each batch shows the same {images} objects in a new order, with more of their pixels \
visible each time: <b>{}</b> of the pixels in the first batch{}. Hidden pixels are painted in one \
flat grey (the average colour of the pictures).</p>\
<p>For every image, choose which of these {} kinds of object it shows:</p><ul class=\"classes\">{classes}</ul>\
<p>Click a button, or press its number key. If you are unsure, make your best guess: \
every image needs one answer, and an answer cannot be changed. Many images will be hard to \
recognise; that is expected.</p>\
<p>You get a personal code. If you stop, you can continue later where you left off with it.</p></div>\
<div class=\"card\"><p><b>Consent.</b> {}</p>\
<form method=\"post\" action=\"/start\"><button class=\"start\" type=\"submit\">I agree — start</button></form></div>\
<div class=\"card\"><form method=\"get\" action=\"/continue\"><p>Already started? Enter your code to continue:</p>\
<input type=\"text\" name=\"code\" maxlength=\"32\" autocomplete=\"off\" aria-label=\"your code\"> \
<button type=\"submit\">Continue</button></form>{error}</div>",
            percents.first().map(String::as_str).unwrap_or(""),
            if batches > 1 {
                format!(", then {}", percents[1..].join(", then "))
            } else {
                String::new()
            },
            info.class_names.len(),
            esc(info.consent),
            images = info.images,
        ),
    )
}

/// One trial: where the participant is, and what to show.
pub struct TrialView<'a> {
    /// The participant's code.
    pub code: &'a str,
    /// 0-based position in the sequence and the sequence length.
    pub position: usize,
    pub total: usize,
    /// 0-based batch and batch count; the batch's kept fraction.
    pub batch: usize,
    pub batches: usize,
    pub fraction: f64,
    /// Whether this is the batch's first image (show the change of fraction).
    pub first_of_batch: bool,
    /// The trial's opaque id.
    pub trial_id: &'a str,
    /// (class id, name) of each answer button, in order.
    pub choices: &'a [(i64, String)],
}

/// The trial page: progress, the image, one button per class.
pub fn trial(v: &TrialView) -> String {
    let keyed = v.choices.len() <= 10;
    let mut buttons = String::new();
    for (k, (class, name)) in v.choices.iter().enumerate() {
        let key = if keyed {
            format!("<span class=\"key\">{k}</span>")
        } else {
            String::new()
        };
        let _ = write!(
            buttons,
            "<button type=\"submit\" name=\"choice\" value=\"{class}\" data-key=\"{}\">{key}{}</button>",
            if keyed { k.to_string() } else { String::new() },
            esc(name)
        );
    }
    let search = if keyed {
        String::new()
    } else {
        "<input type=\"search\" id=\"filter\" placeholder=\"type to filter the classes\" autofocus>"
            .into()
    };
    let banner = if v.first_of_batch && v.batch > 0 {
        format!(
            "<p class=\"newbatch\">New batch: from now on <b>{}%</b> of the pixels are visible.</p>",
            pct(v.fraction)
        )
    } else {
        String::new()
    };
    let hint = if keyed {
        "Click the object you think it is, or press its number key (0–9)."
    } else {
        "Type to filter the classes, then click one."
    };
    page(
        &format!("Image {} of {}", v.position + 1, v.total),
        &format!(
            "<div class=\"card\"><div class=\"progress\"><span>Image {n} of {total}</span>\
<progress value=\"{done}\" max=\"{total}\"></progress><span>{pct_done}%</span></div>\
<p class=\"batch\">Batch {b} of {batches}: <b>{frac}%</b> of the pixels are visible, the rest is hidden (flat grey).</p>{banner}</div>\
<div class=\"card\"><form id=\"answer\" method=\"post\" action=\"/p/{code}/answer\">\
<input type=\"hidden\" name=\"trial\" value=\"{id}\"><input type=\"hidden\" name=\"rt_ms\" id=\"rt_ms\" value=\"\">\
<div class=\"stage\"><img id=\"stimulus\" src=\"/img/{id}.png\" alt=\"image to classify\">\
<div class=\"choices\">{search}{buttons}</div></div></form>\
<p class=\"hint\">{hint}</p></div>\
<p class=\"hint\">Your code is <span class=\"code\">{code}</span>. Keep it to continue later.</p>\
<script>{SCRIPT}</script>",
            n = v.position + 1,
            total = v.total,
            done = v.position,
            pct_done = v.position * 100 / v.total.max(1),
            b = v.batch + 1,
            batches = v.batches,
            frac = pct(v.fraction),
            code = esc(v.code),
            id = esc(v.trial_id),
        ),
    )
}

/// Response time from the image being displayed to the click; keys 0–9; one
/// submission only; class filter when there are more than ten classes.
const SCRIPT: &str = "
(function(){
var t0=null,img=document.getElementById('stimulus'),form=document.getElementById('answer'),sent=false;
function shown(){if(t0===null)t0=performance.now();}
if(img.complete&&img.naturalWidth>0)shown();else img.addEventListener('load',shown);
form.addEventListener('submit',function(ev){
  if(sent){ev.preventDefault();return;}
  sent=true;
  if(t0!==null)document.getElementById('rt_ms').value=Math.round(performance.now()-t0);
  setTimeout(function(){form.querySelectorAll('button').forEach(function(b){b.disabled=true;});},0);
});
document.addEventListener('keydown',function(ev){
  if(ev.ctrlKey||ev.altKey||ev.metaKey||/^(INPUT|TEXTAREA)$/.test(ev.target.tagName))return;
  var b=form.querySelector('button[data-key=\"'+ev.key+'\"]');
  if(b&&ev.key!==''){ev.preventDefault();b.click();}
});
var f=document.getElementById('filter');
if(f)f.addEventListener('input',function(){var q=f.value.toLowerCase();
  form.querySelectorAll('button').forEach(function(b){b.style.display=b.textContent.toLowerCase().indexOf(q)>=0?'':'none';});});
})();
";

/// The end page.
pub fn done(code: &str, total: usize) -> String {
    page(
        "Thank you",
        &format!(
            "<h1>Thank you!</h1><div class=\"card\"><p>You answered all {total} images. \
Your code was <span class=\"code\">{}</span>. You can close this page.</p></div>",
            esc(code)
        ),
    )
}

/// The page for a code the study does not know.
pub fn unknown_code(code: &str) -> String {
    page(
        "Unknown code",
        &format!(
            "<h1>We do not know this code</h1><div class=\"card\"><p>No participant has the code \
<span class=\"code\">{}</span>. Codes are 8 letters and digits, like <span class=\"code\">K7QF3MZA</span>; \
check it for typos.</p><p><a href=\"/\">Back to the start page</a> to enter it again or to start anew.</p></div>",
            esc(code)
        ),
    )
}

/// A short message page with a link onward.
pub fn message(title: &str, text: &str, link: (&str, &str)) -> String {
    page(
        title,
        &format!(
            "<h1>{}</h1><div class=\"card\"><p>{}</p><p><a href=\"{}\">{}</a></p></div>",
            esc(title),
            esc(text),
            esc(link.0),
            esc(link.1)
        ),
    )
}

/// The admin login form.
pub fn admin_login(error: Option<&str>) -> String {
    let error = error
        .map(|e| format!("<p class=\"error\">{}</p>", esc(e)))
        .unwrap_or_default();
    page(
        "Study admin: log in",
        &format!(
            "<h1>Study admin</h1><div class=\"card\"><form method=\"post\" action=\"/admin/login\">\
<p>Admin token (printed by <code>overinterp human serve</code>, also in the study's <code>admin-token</code> file):</p>\
<input type=\"password\" name=\"token\" autocomplete=\"off\" aria-label=\"admin token\"> \
<button type=\"submit\">Log in</button></form>{error}</div>"
        ),
    )
}

/// One participant's row on the admin page.
pub struct ProgressRow {
    pub code: String,
    pub started: String,
    pub answered: i64,
    pub last: String,
}

/// The admin page: progress per participant.
pub fn admin(rows: &[ProgressRow], total: usize) -> String {
    let mut table = String::new();
    for r in rows {
        let _ = write!(
            table,
            "<tr><td class=\"code\">{}</td><td>{}</td><td>{} / {total}</td><td>{}</td></tr>",
            esc(&r.code),
            esc(&r.started),
            r.answered,
            esc(&r.last)
        );
    }
    let finished = rows.iter().filter(|r| r.answered as usize >= total).count();
    page(
        "Study admin",
        &format!(
            "<h1>Study admin</h1><div class=\"card\"><p>{} participant(s), {finished} finished. \
<a href=\"/admin/results\">Download all answers (CSV)</a></p>\
<table><tr><th>code</th><th>started (UTC)</th><th>answered</th><th>last answer (UTC)</th></tr>{table}</table>\
<form method=\"post\" action=\"/admin/logout\"><p><button type=\"submit\">Log out</button></p></form></div>",
            rows.len()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_in_codes_and_names() {
        let p = unknown_code("<script>alert(1)</script>");
        assert!(!p.contains("<script>alert"));
        assert!(p.contains("&lt;script&gt;"));
        assert_eq!(pct(0.05), "5");
        assert_eq!(pct(0.125), "12.5");
    }
}
