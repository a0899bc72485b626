// MathJax for pymdownx.arithmatex (generic mode) and the notebooks' Markdown cells: typeset only
// the spans arithmatex marks and the rendered Markdown of a notebook (which writes $...$ and
// $$...$$, as Jupyter does), and again after every instant-navigation page change of the theme.
// Elsewhere a dollar sign stays a dollar sign.
//
// MathJax skips an element whose class matches ignoreHtmlClass, and everything inside it, unless
// the element's class matches processHtmlClass; inside a processed element the children are
// skipped again only if their own class matches ignoreHtmlClass. So the ignored classes are the
// page's two top-level containers (header and body), not every class: a notebook cell's math
// sits in plain <p> and <li> elements below the processed one.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"], ["$", "$"]],
    displayMath: [["\\[", "\\]"], ["$$", "$$"]],
    processEscapes: true,
    processEnvironments: true,
  },
  options: {
    ignoreHtmlClass: "md-header|md-container",
    processHtmlClass: "arithmatex|jp-RenderedMarkdown",
  },
};

if (typeof document$ !== "undefined") {
  document$.subscribe(() => {
    if (window.MathJax && MathJax.typesetPromise) {
      MathJax.startup.output.clearCache();
      MathJax.typesetClear();
      MathJax.texReset();
      MathJax.typesetPromise();
    }
  });
}
