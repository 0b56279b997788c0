"""A short, human device hint from a User-Agent ("Android phone, Chrome").

Shown to the teacher next to a waiting student or a link-sharing alert; the full
User-Agent is personal data and only goes into the audit record's personal fields.
"""

from __future__ import annotations


def device_hint(user_agent: str | None) -> str:
    ua = (user_agent or "")[:512]
    low = ua.lower()
    if "iphone" in low:
        kind = "iPhone"
    elif "ipad" in low:
        kind = "iPad"
    elif "android" in low:
        kind = "Android tablet" if "mobile" not in low else "Android phone"
    elif "cros" in low:
        kind = "Chromebook"
    elif "windows" in low:
        kind = "Windows PC"
    elif "mac os x" in low or "macintosh" in low:
        kind = "Mac"
    elif "linux" in low:
        kind = "Linux PC"
    else:
        kind = ""
    if "edg/" in low:
        browser = "Edge"
    elif "opr/" in low or "opera" in low:
        browser = "Opera"
    elif "coc_coc" in low or "coccoc" in low:
        browser = "Cốc Cốc"
    elif "firefox/" in low:
        browser = "Firefox"
    elif "chrome/" in low or "chromium/" in low:
        browser = "Chrome"
    elif "safari/" in low:
        browser = "Safari"
    else:
        browser = ""
    parts = [p for p in (kind, browser) if p]
    return ", ".join(parts) if parts else "?"
