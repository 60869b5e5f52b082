"""Hostile strings a delivery may hold, where the console shows them (payload values and keys, a
header, the delivery id): script tags, event handlers, `javascript:` links, SVG, attribute
breakouts, a template and a style."""

XSS_CORPUS = [
    "<img src=x onerror=alert(1)>",
    "</script><script>alert(2)</script>",
    "javascript:alert(3)",
    "<svg onload=alert(4)>",
    '"><svg/onload=alert(5)>',
    "' onmouseover='alert(6)' x='",
    '<a href="javascript:alert(7)">click</a>',
    "<iframe src=javascript:alert(8)></iframe>",
    "<math><mtext><table><mglyph><style><img src=x onerror=alert(9)>",
    "<style>body{display:none}</style>",
    "{{7*7}} ${alert(10)}",
    "<details open ontoggle=alert(11)>",
]
