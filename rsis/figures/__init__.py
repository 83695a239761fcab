"""Pictures of results: the palette, text drawing, qualitative panels and training curves.

``palette`` colours referents and errors (also used by ``rsis predict``), ``text`` draws
wrapped legends, ``panels`` lays out the paper-style figures, ``command`` is ``rsis figures``
and ``curves`` is ``rsis curves``.
"""
