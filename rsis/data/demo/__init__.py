"""Generated demo dataset of coloured shapes, written in exactly the RefCOCO `refer` layout.

Each image holds 2 to ``max_objects`` shapes (category = shape; attributes colour and
small/big) on a textured, noisy background. Later shapes may partly cover earlier ones; every
stored polygon outlines the VISIBLE part of its shape along pixel edges, so pycocotools decodes
it to exactly the pixels painted in that shape's colour. Every referent has 2 or 3 expressions
from the enabled templates: attribute ("the small red circle"), extreme ("the leftmost
triangle") and relational ("blue square left of the green star"), each resolving to exactly
that shape in its image. ``SceneRules`` sets how hard scenes and expressions are. Positions are
the centres of the visible boxes (the annotations' ``bbox``). Splits follow RefCOCO unc: testA
scenes are crowded with one shape (at least 3 of it), testB scenes never hold more than 2 of a
shape, train and val mix both kinds half and half.

Two scales: ``small`` (the default) makes every shape a referent in images of one size;
``refcoco`` writes RefCOCO's counts per split (images, referents, expressions) in COCO's
image sizes, with 1 to 3 referents per image and the other shapes left as unreferenced
annotations, as in COCO.

Modules: ``grammar`` (which expressions name one object), ``polygons`` (exact outlines of
masks), ``scenes`` (one picture and its objects), ``scale`` (what each image must hold) and
``writer`` (the files, and ``rsis demo``).

Output (``<out>`` is e.g. ``resources/demo``)::

    <out>/demo/refs(unc).p      Python 3 pickle, protocol 2, list of ref dicts
    <out>/demo/instances.json   COCO images / annotations (polygons) / categories
    <out>/images/demo_<image_id>.jpg
"""
