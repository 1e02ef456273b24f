(function () {
  "use strict";
  // Every value from the run (keys, captions, URLs, names) is set with textContent or as a checked
  // http(s) href: nothing from the data is ever parsed as HTML.
  var data = JSON.parse(document.getElementById("report-data").textContent);
  var clusters = data.clusters;
  var state = {sort: "size-desc", query: "", minSize: 0, minConf: 0, page: 0, pageSize: data.page_size};

  function $(id) { return document.getElementById(id); }
  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) { node.className = cls; }
    if (text !== undefined && text !== null) { node.textContent = String(text); }
    return node;
  }
  function safeUrl(url) { return typeof url === "string" && /^https?:\/\//i.test(url) ? url : null; }
  function fmt(x, digits) { return x === null || x === undefined ? "-" : Number(x).toFixed(digits); }

  function member(m) {
    var fig = el("figure", "member");
    if (m.thumb) {
      var img = el("img");
      img.src = m.thumb;
      img.alt = m.key;
      img.width = data.thumbnail_px;
      fig.appendChild(img);
    } else {
      fig.classList.add("text-only");
    }
    var cap = el("figcaption");
    cap.appendChild(el("span", "key", m.key));
    cap.appendChild(el("span", "conf", fmt(m.conf, 2)));
    if (m.caption) { cap.appendChild(el("span", "caption", m.caption)); }
    if (m.url) {
      var href = safeUrl(m.url);
      if (href) {
        var link = el("a", "url", m.url);
        link.href = href;
        link.rel = "noopener noreferrer nofollow";
        cap.appendChild(link);
      } else {
        cap.appendChild(el("span", "url", m.url));
      }
    }
    fig.appendChild(cap);
    return fig;
  }

  function section(c) {
    var sec = el("section", "cluster");
    sec.id = "cluster-" + c.id;
    sec.setAttribute("data-cluster", String(c.id));
    var head = el("h3", null, "Cluster " + c.id + (c.name ? " \u2014 " + c.name : ""));
    sec.appendChild(head);
    var meta = el("p", "meta");
    meta.appendChild(el("span", null, c.size.toLocaleString() + " rows"));
    meta.appendChild(el("span", null, "mean confidence " + fmt(c.conf, 3)));
    if (c.score !== null) { meta.appendChild(el("span", null, "name score " + fmt(c.score, 3))); }
    if (c.dups !== null) { meta.appendChild(el("span", null, c.dups.toLocaleString() + " near-duplicates")); }
    sec.appendChild(meta);
    if (c.names.length) { sec.appendChild(el("p", "names", "also: " + c.names.join(", "))); }
    if (c.top.length) {
      sec.appendChild(el("h4", null, "nearest the centre"));
      var top = el("div", "members");
      c.top.forEach(function (m) { top.appendChild(member(m)); });
      sec.appendChild(top);
    }
    if (c.low.length) {
      sec.appendChild(el("h4", null, "borderline (least confident)"));
      var low = el("div", "members borderline");
      c.low.forEach(function (m) { low.appendChild(member(m)); });
      sec.appendChild(low);
    }
    if (c.captions.length) {
      var list = el("ul", "captions");
      c.captions.forEach(function (t) { list.appendChild(el("li", null, t)); });
      sec.appendChild(list);
    }
    return sec;
  }

  function matches(c) {
    if (c.size < state.minSize || (c.conf || 0) < state.minConf) { return false; }
    if (!state.query) { return true; }
    var q = state.query;
    var hay = [String(c.id), c.name || ""].concat(c.names, c.captions).join("\n").toLowerCase();
    return hay.indexOf(q) >= 0;
  }

  var sorters = {
    "size-desc": function (a, b) { return b.size - a.size || a.id - b.id; },
    "size-asc": function (a, b) { return a.size - b.size || a.id - b.id; },
    "conf-desc": function (a, b) { return (b.conf || 0) - (a.conf || 0) || a.id - b.id; },
    "conf-asc": function (a, b) { return (a.conf || 0) - (b.conf || 0) || a.id - b.id; },
    "name": function (a, b) {
      if (!a.name !== !b.name) { return a.name ? -1 : 1; }
      return (a.name || "").localeCompare(b.name || "") || a.id - b.id;
    },
    "id": function (a, b) { return a.id - b.id; }
  };

  function render() {
    var shown = clusters.filter(matches).sort(sorters[state.sort]);
    var pages = Math.max(1, Math.ceil(shown.length / state.pageSize));
    state.page = Math.min(state.page, pages - 1);
    var start = state.page * state.pageSize;
    var list = $("clusters");
    list.replaceChildren();
    shown.slice(start, start + state.pageSize).forEach(function (c) { list.appendChild(section(c)); });
    $("count").textContent = shown.length + " of " + clusters.length + " clusters; page " +
      (state.page + 1) + " of " + pages;
    $("prev").disabled = state.page === 0;
    $("next").disabled = state.page >= pages - 1;
  }

  function bind(id, event, apply) {
    $(id).addEventListener(event, function (e) { apply(e.target.value); state.page = 0; render(); });
  }
  bind("sort", "change", function (v) { state.sort = v; });
  bind("query", "input", function (v) { state.query = v.trim().toLowerCase(); });
  bind("min-size", "input", function (v) { state.minSize = Number(v) || 0; });
  bind("min-conf", "input", function (v) { state.minConf = Number(v) || 0; });
  $("prev").addEventListener("click", function () { state.page -= 1; render(); window.scrollTo(0, $("browse").offsetTop); });
  $("next").addEventListener("click", function () { state.page += 1; render(); window.scrollTo(0, $("browse").offsetTop); });
  render();
  document.body.setAttribute("data-ready", "1");
}());
