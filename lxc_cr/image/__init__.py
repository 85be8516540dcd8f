"""The lxc-cr image: one file per checkpoint (docs/image-format.md).

    from lxc_cr.image import ImageWriter, ImageReader, kinds
"""

__all__ = ["ImageWriter", "ImageReader", "RawRecord", "CURRENT_VERSION"]


def __getattr__(name):  # lazy, so that importing kinds stays cheap
    if name == "ImageWriter":
        from lxc_cr.image.writer import ImageWriter
        return ImageWriter
    if name in ("ImageReader", "RawRecord"):
        from lxc_cr.image import reader
        return getattr(reader, name)
    if name == "CURRENT_VERSION":
        from lxc_cr.image.format import CURRENT_VERSION
        return CURRENT_VERSION
    raise AttributeError(name)
