/**
 * Typed client for skyrender's HTTP API.
 *
 * `schema.d.ts` is generated from `docs/openapi.json` by openapi-typescript (`./generate.sh`);
 * requests go through openapi-fetch, so a wrong field name or type is a compile error, not a
 * 422 at run time. `SkyrenderService` wraps it the way a NestJS provider would: one method per
 * endpoint, images returned as bytes with their WCS, API errors thrown as `SkyrenderApiError`.
 */

import createClient, { type Client } from "openapi-fetch";
import type { components, paths } from "./schema.js";

export type { components, paths } from "./schema.js";

type Schemas = components["schemas"];
export type PreviewRequest = Schemas["PreviewRequest"];
export type RenderTilesRequest = Schemas["RenderTilesRequest"];
export type SnapshotRequest = Schemas["SnapshotRequest"];
export type ManifestRequest = Schemas["ManifestRequest"];
export type ManifestResponse = Schemas["ManifestResponse"];
export type WcsValidateResponse = Schemas["WcsValidateResponse"];
export type ErrorBody = Schemas["ErrorBody"];
export type SurveyList = Schemas["SurveyList"];
export type CompositeRequest = Schemas["CompositeRequest"];
export type DifferenceRequest = Schemas["DifferenceRequest"];
export type BlinkRequest = Schemas["BlinkRequest"];
export type StatsRequest = Schemas["StatsRequest"];
export type StatsResponse = Schemas["StatsResponse"];
export type SurveyInfo = Schemas["SurveyInfo"];
export type Hips2FitsQuery = NonNullable<paths["/hips2fits"]["get"]["parameters"]["query"]>;

/** The raw openapi-fetch client, typed by the OpenAPI document. */
export type SkyrenderClient = Client<paths>;

export function createSkyrenderClient(baseUrl: string, init: { headers?: HeadersInit } = {}): SkyrenderClient {
  return createClient<paths>({ baseUrl: baseUrl.replace(/\/$/, ""), headers: init.headers });
}

/** Contour lines as GeoJSON (RFC 7946): one feature per level, coordinates [ra, dec] in degrees. */
export interface GeoJsonContours {
  type: "FeatureCollection";
  features: {
    type: "Feature";
    geometry: { type: string; coordinates: unknown };
    properties: Record<string, unknown>;
  }[];
}

/** An image the service rendered. */
export interface RenderedImage {
  /** The encoded picture (PNG, JPEG or FITS). */
  bytes: Uint8Array;
  /** `image/png`, `image/jpeg` or `application/fits`. */
  contentType: string;
  /** The picture's WCS: FITS keywords from the `X-WCS` header (absent on FITS, whose header has it). */
  wcs: Record<string, string | number | boolean> | null;
  /** Where the time went (`Server-Timing`), and the request's id for the logs. */
  serverTiming: string | null;
  requestId: string | null;
}

/** A non-2xx answer: the service's `{error, detail}` (or hips2fits' `{title, description}`). */
export class SkyrenderApiError extends Error {
  constructor(
    readonly status: number,
    readonly error: string,
    readonly detail: unknown,
    readonly requestId: string | null,
  ) {
    super(`skyrender ${status} ${error}: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`);
    this.name = "SkyrenderApiError";
  }
}

function fail(response: Response, body: unknown): never {
  const b = (body ?? {}) as Record<string, unknown>;
  const error = typeof b.error === "string" ? b.error : typeof b.title === "string" ? b.title : response.statusText;
  const detail = "detail" in b ? b.detail : b.description;
  throw new SkyrenderApiError(response.status, error, detail, response.headers.get("x-request-id"));
}

async function image(result: { data?: unknown; error?: unknown; response: Response }): Promise<RenderedImage> {
  const { data, error, response } = result;
  if (!response.ok || !(data instanceof ArrayBuffer)) fail(response, error);
  const wcs = response.headers.get("x-wcs");
  return {
    bytes: new Uint8Array(data),
    contentType: response.headers.get("content-type") ?? "application/octet-stream",
    wcs: wcs ? (JSON.parse(wcs) as Record<string, string | number | boolean>) : null,
    serverTiming: response.headers.get("server-timing"),
    requestId: response.headers.get("x-request-id"),
  };
}

function json<T>(result: { data?: T; error?: unknown; response: Response }): T {
  if (!result.response.ok || result.data === undefined) fail(result.response, result.error);
  return result.data;
}

/**
 * skyrender as a NestJS-style provider: construct it with the service's base URL (from the
 * application's configuration), inject it where pictures are needed.
 *
 * ```ts
 * const sky = new SkyrenderService("http://skyrender:8000");
 * const { bytes } = await sky.renderPreview({ ra: 83.8, dec: -5.4, fovDeg: 1, width: 512, height: 512 });
 * ```
 */
export class SkyrenderService {
  readonly client: SkyrenderClient;
  private readonly baseUrl: string;

  constructor(baseUrl: string, init: { headers?: HeadersInit } = {}) {
    this.baseUrl = baseUrl.replace(/\/$/, "");
    this.client = createSkyrenderClient(this.baseUrl, init);
  }

  /** `POST /v1/preview`: a field of a configured survey as PNG (default) or JPEG. */
  async renderPreview(body: PreviewRequest): Promise<RenderedImage> {
    return image(await this.client.POST("/v1/preview", { body, parseAs: "arrayBuffer" }));
  }

  /** `POST /render/snapshot`: the given tiles as a PNG snapshot (default 512x512), for the job runner. */
  async renderSnapshot(body: SnapshotRequest): Promise<RenderedImage> {
    return image(await this.client.POST("/render/snapshot", { body, parseAs: "arrayBuffer" }));
  }

  /** `POST /render/preview`: the given tiles (one survey, one order) as a PNG. */
  async renderTiles(body: RenderTilesRequest): Promise<RenderedImage> {
    return image(await this.client.POST("/render/preview", { body, parseAs: "arrayBuffer" }));
  }

  /** `POST /v1/composite`: layers combined on one grid (rgb, lupton, overlay, contours) as PNG or JPEG. */
  async composite(body: CompositeRequest): Promise<RenderedImage> {
    return image(await this.client.POST("/v1/composite", { body, parseAs: "arrayBuffer" }));
  }

  /** `POST /v1/composite` with `mode: contours, format: geojson`: the contour lines in RA/Dec [deg]. */
  async contourLines(body: Omit<CompositeRequest, "mode" | "format">): Promise<GeoJsonContours> {
    const result = await this.client.POST("/v1/composite", {
      body: { ...body, mode: "contours", format: "geojson" },
      parseAs: "json",
    });
    return json(result) as GeoJsonContours;
  }

  /** `POST /v1/epochs/difference`: later minus earlier epoch on one grid (PNG, JPEG or float32 FITS). */
  async epochDifference(body: DifferenceRequest): Promise<RenderedImage> {
    return image(await this.client.POST("/v1/epochs/difference", { body, parseAs: "arrayBuffer" }));
  }

  /** `POST /v1/epochs/blink`: one frame per epoch as an animated PNG or GIF. */
  async epochBlink(body: BlinkRequest): Promise<RenderedImage> {
    return image(await this.client.POST("/v1/epochs/blink", { body, parseAs: "arrayBuffer" }));
  }

  /** `POST /v1/epochs/stats`: per-epoch peak, median, robust noise and the significance of the change. */
  async epochStats(body: StatsRequest): Promise<StatsResponse> {
    return json(await this.client.POST("/v1/epochs/stats", { body }));
  }

  /** `POST /v1/tile-manifest`: the tiles of a survey covering a field. */
  async tileManifest(body: ManifestRequest): Promise<ManifestResponse> {
    return json(await this.client.POST("/v1/tile-manifest", { body }));
  }

  /** `POST /v1/wcs-validate`: what a FITS header's WCS describes (a 400 `SkyrenderApiError` if invalid). */
  async validateWcs(fitsHeader: Record<string, unknown>): Promise<WcsValidateResponse> {
    return json(await this.client.POST("/v1/wcs-validate", { body: { fitsHeader } }));
  }

  /** `GET /hips2fits`: a CDS hips2fits-compatible cutout (FITS, PNG or JPEG). */
  async hips2fits(query: Hips2FitsQuery): Promise<RenderedImage> {
    return image(await this.client.GET("/hips2fits", { params: { query }, parseAs: "arrayBuffer" }));
  }

  /** `POST /hips2fits`: the same cutout with the parameters as form fields. */
  async hips2fitsForm(query: Hips2FitsQuery): Promise<RenderedImage> {
    const form = new URLSearchParams();
    for (const [k, v] of Object.entries(query)) if (v !== undefined && v !== null) form.set(k, String(v));
    const response = await fetch(`${this.baseUrl}/hips2fits`, { method: "POST", body: form });
    if (!response.ok) fail(response, await response.json().catch(() => undefined));
    return image({ data: await response.arrayBuffer(), response });
  }

  /** `GET /healthz`: `ok` false (HTTP 503) with the reason when an upstream survey or the disk is not. */
  async health(): Promise<{ ok: boolean; body: Record<string, unknown> }> {
    const { data, error, response } = await this.client.GET("/healthz");
    if (response.status !== 200 && response.status !== 503) fail(response, error);
    return { ok: response.status === 200, body: (data ?? error) as Record<string, unknown> };
  }

  /** `GET /readyz`: `ok` true once the catalogue is loaded and every stage is warm (503 with the reason until then). */
  async ready(): Promise<{ ok: boolean; body: Record<string, unknown> }> {
    const { data, error, response } = await this.client.GET("/readyz");
    if (response.status !== 200 && response.status !== 503) fail(response, error);
    return { ok: response.status === 200, body: (data ?? error) as Record<string, unknown> };
  }

  /** `GET /livez`: the process answers (Kubernetes liveness). */
  async live(): Promise<Record<string, string>> {
    return json(await this.client.GET("/livez"));
  }

  /** `GET /v1/surveys`: the configured surveys (the first is the default) and their properties. */
  async surveys(): Promise<SurveyInfo[]> {
    return json(await this.client.GET("/v1/surveys")).surveys;
  }

  /** `GET /v1/stats`: tile cache counters. */
  async stats(): Promise<Record<string, unknown>> {
    return json(await this.client.GET("/v1/stats")) as Record<string, unknown>;
  }
}
