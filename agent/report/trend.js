// The trend of one tag at a time: the page embeds every tag's min/max envelope (float32,
// base64) and draws the one chosen, so 10,000 tags cost one plot, not 10,000.
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("trend-data").textContent);
  const select = document.getElementById("trend-tag");
  const note = document.getElementById("trend-note");

  function floats(text) {
    const bytes = atob(text);
    const buffer = new Uint8Array(bytes.length);
    for (let i = 0; i < bytes.length; i++) buffer[i] = bytes.charCodeAt(i);
    return new Float32Array(buffer.buffer);
  }

  function shifted(values, by) {
    return Array.from(values, (v) => v + by);
  }

  function show(index) {
    const tag = data.tags[index];
    const low = floats(tag.min);
    const high = floats(tag.max);
    const x = Array.from(low, (_, k) => data.start + (k + 0.5) * data.width);
    const traces = [];
    if (tag.band) {
      traces.push(
        { x: x, y: shifted(high, tag.band), name: "+" + tag.band_label, mode: "lines",
          line: { width: 0.5, dash: "dot", color: "#9ab" }, hoverinfo: "skip" },
        { x: x, y: shifted(low, -tag.band), name: "-" + tag.band_label, mode: "lines",
          line: { width: 0.5, dash: "dot", color: "#9ab" }, fill: "tonexty",
          fillcolor: "rgba(150,170,190,0.15)", hoverinfo: "skip" }
      );
    }
    // few buckets with data (a tag sent on change, a short range): show them as points too
    let filled = 0;
    for (const v of low) if (!Number.isNaN(v)) filled++;
    const mode = filled < 200 ? "lines+markers" : "lines";
    traces.push(
      { x: x, y: high, name: "max", mode: mode, line: { width: 1, color: "#1f5fa8" },
        marker: { size: 4 } },
      { x: x, y: low, name: "min", mode: mode, line: { width: 1, color: "#1f5fa8" },
        marker: { size: 4 }, fill: "tonexty", fillcolor: "rgba(31,95,168,0.25)" }
    );
    for (const kind of tag.markers) {
      traces.push({ x: kind.x, y: kind.y, text: kind.text, name: kind.name, mode: "markers",
        marker: { symbol: kind.symbol, size: 7, color: kind.color }, hoverinfo: "x+y+text" });
    }
    const layout = {
      height: 420, margin: { l: 70, r: 20, t: 30, b: 40 },
      title: { text: tag.name + (tag.unit ? " [" + tag.unit + "]" : ""), font: { size: 14 } },
      xaxis: { type: "date" }, yaxis: { title: { text: tag.unit || "" } },
      legend: { orientation: "h" }, paper_bgcolor: "white", plot_bgcolor: "white",
    };
    Plotly.react("trend", traces, layout, { displaylogo: false, responsive: true });
    note.textContent = tag.note;
  }

  for (const [index, tag] of data.tags.entries()) {
    const option = document.createElement("option");
    option.value = index;
    option.textContent = tag.name;
    select.appendChild(option);
  }
  select.addEventListener("change", () => show(Number(select.value)));
  if (data.tags.length) {
    select.value = data.first;
    show(data.first);
  }
})();
