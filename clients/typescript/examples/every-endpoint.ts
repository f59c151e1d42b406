/**
 * Every endpoint of skyrender's API called once through the typed client, each answer checked.
 *
 *   node dist/examples/every-endpoint.js http://127.0.0.1:8000 [survey] [ra] [dec] [fovDeg] \
 *       [epochSurvey] [layer1,layer2,layer3]
 *
 * `survey` is one survey, `epochSurvey` one configured with two or more epochs (name or alias),
 * and the three layers are surveys covering the same field (for RGB, overlay and contours).
 *
 * Prints one JSON line {checks: [{endpoint, ok, detail}]} and exits 1 if any check failed.
 * The `PortalSkyService` below is how a NestJS service of the portal would use the client.
 */

import { type RenderedImage, SkyrenderApiError, SkyrenderService } from "../src/index.js";

/** A portal service in NestJS style: the skyrender client injected, PNG bytes out. */
class PortalSkyService {
  constructor(private readonly sky: SkyrenderService) {}

  async renderPreview(ra: number, dec: number, fovDeg: number, survey?: string): Promise<Uint8Array> {
    const picture = await this.sky.renderPreview({ ra, dec, fovDeg, width: 320, height: 240, survey, colormap: "magma" });
    return picture.bytes;
  }

  async renderSnapshot(tileUrls: string[]): Promise<Uint8Array> {
    return (await this.sky.renderSnapshot({ tiles: tileUrls, colormap: "gray", scale: "asinh" })).bytes;
  }
}

const PNG_SIGNATURE = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];

/** Width and height from a PNG's IHDR chunk, or an error if the bytes are not a PNG. */
function pngSize(bytes: Uint8Array): [number, number] {
  if (!PNG_SIGNATURE.every((b, i) => bytes[i] === b)) throw new Error("not a PNG (signature)");
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (String.fromCharCode(...bytes.subarray(12, 16)) !== "IHDR") throw new Error("PNG without IHDR first");
  return [view.getUint32(16), view.getUint32(20)];
}

function expectPng(image: RenderedImage | Uint8Array, width: number, height: number): string {
  const bytes = image instanceof Uint8Array ? image : image.bytes;
  const [w, h] = pngSize(bytes);
  if (w !== width || h !== height) throw new Error(`PNG is ${w}x${h}, expected ${width}x${height}`);
  if (!(image instanceof Uint8Array)) {
    if (image.contentType !== "image/png") throw new Error(`content-type ${image.contentType}`);
    if (!image.wcs || image.wcs.NAXIS1 !== width || image.wcs.NAXIS2 !== height) {
      throw new Error(`X-WCS does not describe the picture: ${JSON.stringify(image.wcs)}`);
    }
  }
  return `PNG ${w}x${h}, ${bytes.length} bytes`;
}

function assert(condition: unknown, message: string): asserts condition {
  if (!condition) throw new Error(message);
}

async function main(): Promise<number> {
  const argv = process.argv.slice(2);
  const [base = "http://127.0.0.1:8000", survey, ra = "266.4", dec = "-28.9", fov = "4", epochSurvey] = argv;
  const layerSurveys = (argv[6] ?? "").split(",").filter(Boolean);
  const field = { ra: Number(ra), dec: Number(dec), fovDeg: Number(fov) };
  const sky = new SkyrenderService(base);
  const portal = new PortalSkyService(sky);
  const checks: { endpoint: string; ok: boolean; detail: string }[] = [];
  const check = async (endpoint: string, run: () => Promise<string>): Promise<void> => {
    try {
      checks.push({ endpoint, ok: true, detail: await run() });
    } catch (err) {
      checks.push({ endpoint, ok: false, detail: err instanceof Error ? err.message : String(err) });
    }
  };

  let tileUrls: string[] = [];
  await check("POST /v1/tile-manifest", async () => {
    const m = await sky.tileManifest({ ...field, survey, width: 320, height: 240 });
    assert(typeof m.survey === "string" && m.survey.length > 0, "manifest without survey");
    assert(Number.isInteger(m.order) && m.order >= 0, `order ${m.order}`);
    assert(m.tileWidth > 0 && (m.tileWidth & (m.tileWidth - 1)) === 0, `tileWidth ${m.tileWidth}`);
    assert(["equatorial", "galactic", "ecliptic", "icrs"].includes(m.frame), `frame ${m.frame}`);
    assert(m.tiles.length > 0, "no tiles");
    for (const t of m.tiles) {
      assert(t.order === m.order && t.healpixNside === 2 ** t.order, `tile ${t.id}: order/nside`);
      assert(t.id === `${t.order}/${t.npix}` && t.url.includes(`Npix${t.npix}.`), `tile ${t.id}: id/url`);
    }
    tileUrls = m.tiles.map((t) => t.url);
    return `${m.survey} order ${m.order}, ${m.tiles.length} tiles of ${m.tileWidth} px, ${m.frame}`;
  });
  await check("POST /v1/preview", async () =>
    expectPng(await portal.renderPreview(field.ra, field.dec, field.fovDeg, survey), 320, 240),
  );
  await check("POST /v1/preview (jpeg)", async () => {
    const jpeg = await sky.renderPreview({ ...field, survey, width: 200, height: 100, format: "jpeg" });
    assert(jpeg.bytes[0] === 0xff && jpeg.bytes[1] === 0xd8, "not a JPEG (SOI)");
    assert(jpeg.contentType === "image/jpeg" && jpeg.wcs?.NAXIS1 === 200, "JPEG headers");
    return `JPEG ${jpeg.bytes.length} bytes`;
  });
  await check("POST /render/preview", async () =>
    expectPng(await sky.renderTiles({ tiles: tileUrls.slice(0, 4), width: 300, height: 200 }), 300, 200),
  );
  await check("POST /render/snapshot", async () => expectPng(await portal.renderSnapshot(tileUrls.slice(0, 4)), 512, 512));
  const header = {
    NAXIS: 2, NAXIS1: 512, NAXIS2: 512, CTYPE1: "RA---SIN", CTYPE2: "DEC--SIN", CRVAL1: 150.1, CRVAL2: 2.2,
    CRPIX1: 256.5, CRPIX2: 256.5, CDELT1: -0.0002, CDELT2: 0.0002,
  };
  await check("POST /v1/wcs-validate", async () => {
    const v = await sky.validateWcs(header);
    assert(v.valid === true, "valid header reported invalid");
    const r = v.reprojected as Record<string, unknown>;
    assert(r.projection === "SIN", `projection ${String(r.projection)}`);
    return `valid: ${JSON.stringify(r).slice(0, 80)}`;
  });
  await check("POST /v1/wcs-validate (header wcslib refuses: valid false)", async () => {
    const v = await sky.validateWcs({ ...header, CTYPE1: "RA---XYZ", CTYPE2: "DEC--XYZ" });
    assert(v.valid === false && v.reprojected === null, "a bad WCS header was called valid");
    assert(v.field === "CTYPE1" && typeof v.error === "string" && v.error.includes("XYZ"), `said ${v.error}`);
    assert(!JSON.stringify(v).includes(".c:"), "wcslib's C file names leaked");
    return `valid: false, field ${v.field}: ${String(v.error).slice(0, 60)}`;
  });
  await check("POST /v1/wcs-validate (required keyword missing: 422)", async () => {
    const { NAXIS2: _dropped, ...incomplete } = header;
    try {
      await sky.validateWcs(incomplete);
    } catch (err) {
      assert(err instanceof SkyrenderApiError, `not an API error: ${String(err)}`);
      assert(err.status === 422, `status ${err.status}`);
      assert(typeof err.error === "string" && err.error.length > 0, "no error");
      assert(JSON.stringify(err.detail).includes("NAXIS2"), "the missing keyword is not named");
      return `422 {error: "${err.error}", detail names NAXIS2}`;
    }
    throw new Error("a header without NAXIS2 was accepted");
  });
  await check("GET /healthz", async () => {
    const h = await sky.health();
    assert(typeof h.body.status === "string", "no status");
    assert(h.ok === (h.body.status === "ok"), `ok ${h.ok} but status ${String(h.body.status)}`);
    return `status ${String(h.body.status)}`;
  });
  await check("GET /readyz", async () => {
    const r = await sky.ready();
    assert(r.ok && r.body.status === "ready", `not ready: ${JSON.stringify(r.body)}`);
    return `status ${String(r.body.status)}`;
  });
  await check("GET /livez", async () => {
    const l = await sky.live();
    assert(l.status === "alive", `status ${String(l.status)}`);
    return `status ${l.status}`;
  });
  await check("GET /v1/surveys", async () => {
    const list = await sky.surveys();
    assert(list.length > 0 && list.filter((s) => s.default).length === 1, "one default survey");
    for (const s of list) {
      assert(typeof s.name === "string" && Array.isArray(s.aliases), `survey ${JSON.stringify(s)}`);
      if (s.available) assert(Number.isInteger(s.orderMax) && (s.tileWidth ?? 0) > 0, `${s.name}: orders`);
    }
    if (survey) assert(list.some((s) => s.name === survey), `${survey} not listed`);
    return list.map((s) => `${s.name}${s.epoch ? `@${s.epoch}` : ""}`).join(", ");
  });
  await check("GET /v1/stats", async () => {
    const s = await sky.stats();
    assert(typeof s.cache === "object" && s.cache !== null, "no cache counters");
    return `cache ${JSON.stringify(s.cache).slice(0, 80)}`;
  });
  const cutout = {
    hips: survey ?? "", ra: Number(ra), dec: Number(dec), fov: Number(fov), width: 200, height: 100,
    projection: "TAN" as const,
  };
  await check("GET /hips2fits", async () => expectPng(await sky.hips2fits({ ...cutout, format: "png" }), 200, 100));
  await check("POST /hips2fits", async () => {
    const fits = await sky.hips2fitsForm({ ...cutout, format: "fits" });
    const text = new TextDecoder().decode(fits.bytes.subarray(0, 2880));
    assert(text.startsWith("SIMPLE  =                    T"), "not FITS");
    assert(/NAXIS1\s*=\s*200\b/.test(text) && /NAXIS2\s*=\s*100\b/.test(text), "FITS size");
    assert(fits.bytes.length % 2880 === 0, "FITS not in 2880-byte blocks");
    return `FITS ${fits.bytes.length} bytes`;
  });

  const small = { ...field, width: 240, height: 180 };
  const layers = layerSurveys.map((name) => ({ survey: name, scale: "asinh" as const }));
  await check("POST /v1/composite", async () => {
    assert(layers.length === 3, "give three layer surveys (argument 7, comma separated)");
    const rgb = await sky.composite({ ...small, mode: "rgb", layers });
    return `rgb ${expectPng(rgb, 240, 180)}`;
  });
  await check("POST /v1/composite (contours, geojson)", async () => {
    const [base0, over] = layers;
    assert(base0 && over, "two layers needed");
    const lines = await sky.contourLines({ ...small, layers: [base0, over], contours: { levels: [3, 5] } });
    assert(lines.type === "FeatureCollection" && lines.features.length > 0, "no contour features");
    const first = lines.features[0];
    assert(first && typeof first.geometry.type === "string", "feature without geometry");
    return `${lines.features.length} features, ${first.geometry.type}`;
  });
  const epochs = { ...small, survey: epochSurvey ?? "" };
  await check("POST /v1/epochs/difference", async () => {
    assert(epochSurvey, "give a survey with epochs (argument 6)");
    const diff = await sky.epochDifference({ ...epochs, format: "fits" });
    const text = new TextDecoder().decode(diff.bytes.subarray(0, 2880));
    assert(text.startsWith("SIMPLE  =                    T") && /BITPIX\s*=\s*-32\b/.test(text), "not float FITS");
    assert(/NAXIS1\s*=\s*240\b/.test(text) && /NAXIS2\s*=\s*180\b/.test(text), "FITS size");
    return `float32 FITS ${diff.bytes.length} bytes`;
  });
  await check("POST /v1/epochs/blink", async () => {
    const blink = await sky.epochBlink({ ...epochs, format: "apng", frameMs: 500 });
    const info = expectPng(blink.bytes, 240, 180);
    const chunks = new TextDecoder("latin1").decode(blink.bytes);
    const actl = chunks.indexOf("acTL");
    assert(actl > 0 && actl < chunks.indexOf("IDAT"), "not animated (no acTL before the first IDAT)");
    assert(blink.contentType === "image/apng", `content-type ${blink.contentType}`);
    return `APNG ${info}`;
  });
  await check("POST /v1/epochs/stats", async () => {
    const stats = await sky.epochStats(epochs);
    assert(stats.epochs.length >= 2, `${stats.epochs.length} epochs`);
    for (const e of stats.epochs) {
      assert(typeof e.epoch === "string" && e.pixels > 0, `epoch ${JSON.stringify(e)}`);
      assert(e.noise === null || e.noise >= 0, "negative noise");
    }
    assert(stats.difference !== null && stats.difference !== undefined, "no difference numbers");
    return `${stats.epochs.map((e) => `${e.epoch}: median ${e.median}`).join(", ")}`;
  });

  console.log(JSON.stringify({ checks }));
  return checks.every((c) => c.ok) ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (err) => {
    console.error(err);
    process.exit(2);
  },
);
