"""The web console (arbiter): read-only pages of agents, sessions, markets and variables,
live over server-sent events, served on the [metrics] listener when [console] enabled.

    app.py    routes, the read-only ops each page reads, the live stream
    pages.py  the pages as HTML (pure)
    svg.py    the charts and the sequence diagram as SVG (pure)
    feed.py   what the console keeps from the event stream and ended sessions (bounded)
    static/   console.js (live sections, search) and console.css
"""
