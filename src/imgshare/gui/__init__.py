"""The desktop client, `imgshare gui`: a Tk window over ``imgshare.Client``.

One idea per module: ``worker`` (a background thread and the queue that hands its
results to Tk's thread), ``model`` (the session and the words shown, no Tk),
``widgets``, ``uploads`` and ``gallery`` (the panes), ``app`` (the window) and
``command`` (the click command). docs/client.md, "Desktop GUI", says how it is used.
Nothing is imported here, so that `imgshare --help` does not load Tk.
"""
