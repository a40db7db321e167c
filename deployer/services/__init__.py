"""Write operations of the domain, named `<entity>_<action>` (see ../shared/STYLE.md)."""
