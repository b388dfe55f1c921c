"""Default settings that the Python API, the `kuosan` command and the web page share.

A module without heavy imports, so that the command's parser can read them without loading torch.
"""

VARY_STRENGTH = 0.4  # Pipeline.vary: kept shapes-32's source caption true in most variations (docs/editing.md)
IMG2IMG_STRENGTH = 0.7  # Pipeline.img2img: far enough to follow a new caption, near enough to keep the layout
STRENGTH = {"vary": VARY_STRENGTH, "img2img": IMG2IMG_STRENGTH}  # by edit mode (web page, /api/info)
