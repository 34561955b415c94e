/**
 * xterm.js writes its computed dimensions and theme into <style> elements it creates. The UI's
 * Content-Security-Policy (style-src 'self', no 'unsafe-inline') rightly blocks those, so the text
 * of every <style> under `root` is mirrored into a constructed stylesheet adopted by the document:
 * CSSOM, which the policy allows, and still only text xterm generated (no guest bytes reach it).
 */
export function adoptInlineStyles(root: HTMLElement): () => void {
  const sheets = new Map<HTMLStyleElement, CSSStyleSheet>();
  const sync = () => {
    const seen = new Set<HTMLStyleElement>();
    for (const el of root.querySelectorAll('style')) {
      seen.add(el);
      let sheet = sheets.get(el);
      if (!sheet) {
        sheet = new CSSStyleSheet();
        sheets.set(el, sheet);
        document.adoptedStyleSheets = [...document.adoptedStyleSheets, sheet];
      }
      sheet.replaceSync(el.textContent ?? '');
    }
    for (const [el, sheet] of sheets) {
      if (seen.has(el)) continue;
      sheets.delete(el);
      document.adoptedStyleSheets = document.adoptedStyleSheets.filter((s) => s !== sheet);
    }
  };
  const observer = new MutationObserver((records) => {
    if (
      records.some(
        (r) =>
          r.target.nodeName === 'STYLE' ||
          r.target.parentNode?.nodeName === 'STYLE' ||
          [...r.addedNodes, ...r.removedNodes].some((n) => n.nodeName === 'STYLE'),
      )
    )
      sync();
  });
  observer.observe(root, { childList: true, characterData: true, subtree: true });
  sync();
  return () => {
    observer.disconnect();
    const mine = new Set(sheets.values());
    document.adoptedStyleSheets = document.adoptedStyleSheets.filter((s) => !mine.has(s));
  };
}
