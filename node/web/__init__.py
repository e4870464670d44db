"""Status web page (issue 15 part 2); see ``node.web.server``."""
