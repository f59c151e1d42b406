// Pixel -> sky for the celestial WCS the service puts in X-WCS (FITS keywords as JSON).
// Calabretta & Greisen 2002 (A&A 395, 1077): linear transformation, the projection's
// inverse (x, y) -> native (phi, theta), then the spherical rotation to celestial
// coordinates, as wcslib does it. Only the projections the viewer offers are inverted.
// Angles in degrees; pixel coordinates 0-based with (0, 0) the centre of the
// bottom-left pixel (astropy's origin=0 convention).

const D2R = Math.PI / 180;
const R2D = 180 / Math.PI;
const R0 = R2D; // the projections' sphere radius, so that x, y come out in degrees

export const PROJECTIONS = ["TAN", "SIN", "ARC", "STG", "ZEA", "CAR", "MER", "AIT", "MOL"];
const ZENITHAL = new Set(["TAN", "SIN", "ARC", "STG", "ZEA"]);

const sind = (a) => Math.sin(a * D2R);
const cosd = (a) => Math.cos(a * D2R);
const atan2d = (y, x) => Math.atan2(y, x) * R2D;
const asind = (v) => Math.asin(Math.max(-1, Math.min(1, v))) * R2D;
const acosd = (v) => Math.acos(Math.max(-1, Math.min(1, v))) * R2D;

/** Projection-plane (x, y) [deg] -> native (phi, theta) [deg]; null outside the projection. */
function deproject(code, x, y) {
  if (ZENITHAL.has(code)) {
    const r = Math.hypot(x, y);
    const phi = r === 0 ? 0 : atan2d(x, -y);
    let theta;
    switch (code) {
      case "TAN":
        theta = r === 0 ? 90 : atan2d(R0, r);
        break;
      case "SIN":
        if (r > R0) return null;
        theta = acosd(r / R0);
        break;
      case "ARC":
        theta = 90 - r;
        if (theta < -90) return null;
        break;
      case "STG":
        theta = 90 - 2 * Math.atan(r / (2 * R0)) * R2D;
        break;
      case "ZEA":
        if (r > 2 * R0) return null;
        theta = 90 - 2 * asind(r / (2 * R0));
        break;
    }
    return [phi, theta];
  }
  switch (code) {
    case "CAR":
      if (Math.abs(y) > 90 || Math.abs(x) > 180) return null;
      return [x, y];
    case "MER":
      if (Math.abs(x) > 180) return null;
      return [x, 2 * Math.atan(Math.exp(y / R0)) * R2D - 90];
    case "AIT": {
      const u = (x * D2R) / 4;
      const v = (y * D2R) / 2;
      const z2 = 1 - u * u - v * v;
      if (z2 < 0.5) return null;
      const z = Math.sqrt(z2);
      return [2 * atan2d(2 * z * u, 2 * z2 - 1), asind(y * D2R * z)];
    }
    case "MOL": {
      const s = y / (Math.SQRT2 * R0);
      if (Math.abs(s) > 1) return null;
      const gamma = Math.asin(s);
      const c = Math.cos(gamma);
      const phi = c === 0 ? 0 : (Math.PI * x) / (2 * Math.SQRT2 * c);
      if (Math.abs(phi) > 180) return null;
      return [phi, asind((2 * gamma + Math.sin(2 * gamma)) / Math.PI)];
    }
    default:
      throw new Error(`projection ${code} is not supported by the viewer`);
  }
}

/** The celestial coordinates of the native pole (alpha_p, delta_p) and phi_p (wcslib's celset). */
function nativePole(code, crval1, crval2, lonpole, latpole) {
  const phi0 = 0;
  const theta0 = ZENITHAL.has(code) ? 90 : 0;
  const lat0 = crval2;
  const lng0 = crval1;
  const phip = lonpole ?? (lat0 < theta0 ? 180 : 0);
  if (theta0 === 90) return [lng0, lat0, phip];
  const slat0 = sind(lat0);
  const clat0 = cosd(lat0);
  const sthe0 = sind(theta0);
  const cthe0 = cosd(theta0);
  const sphip = sind(phip - phi0);
  const cphip = cosd(phip - phi0);
  const x = cthe0 * cphip;
  const y = sthe0;
  const z = Math.hypot(x, y);
  const lp = latpole ?? 90;
  let latp;
  if (z === 0) {
    latp = lp;
  } else {
    const u = atan2d(y, x);
    const v = acosd(slat0 / z);
    let latp1 = u + v;
    let latp2 = u - v;
    if (latp1 > 180) latp1 -= 360;
    if (latp2 < -180) latp2 += 360;
    const ok1 = Math.abs(latp1) <= 90 + 1e-10;
    const ok2 = Math.abs(latp2) <= 90 + 1e-10;
    if (ok1 && ok2) latp = Math.abs(latp1 - lp) < Math.abs(latp2 - lp) ? latp1 : latp2;
    else latp = ok1 ? latp1 : latp2;
    latp = Math.max(-90, Math.min(90, latp));
  }
  const zz = cosd(latp) * clat0;
  let lngp;
  if (Math.abs(zz) < 1e-10) {
    if (Math.abs(clat0) < 1e-10) lngp = lng0;
    else if (latp > 0) lngp = lng0 + phip - phi0 - 180;
    else lngp = lng0 - phip + phi0;
  } else {
    const xx = (sthe0 - sind(latp) * slat0) / zz;
    const yy = (sphip * cthe0) / clat0;
    lngp = lng0 - atan2d(yy, xx);
  }
  return [lngp, latp, phip];
}

/** Native (phi, theta) -> celestial (lon, lat) given the native pole (C&G 2002, eq. 2). */
function rotate(phi, theta, pole) {
  const [ap, dp, pp] = pole;
  const st = sind(theta);
  const ct = cosd(theta);
  const sdp = sind(dp);
  const cdp = cosd(dp);
  const dphi = phi - pp;
  const lon = ap + atan2d(-ct * sind(dphi), st * cdp - ct * sdp * cosd(dphi));
  const lat = asind(st * sdp + ct * cdp * cosd(dphi));
  return [((lon % 360) + 360) % 360, lat];
}

/** A celestial WCS read from FITS keywords (the X-WCS header). */
export class Wcs {
  constructor(keys) {
    const ctype1 = String(keys.CTYPE1 || "");
    const ctype2 = String(keys.CTYPE2 || "");
    this.code = ctype1.slice(5, 8).replace(/-/g, "").toUpperCase();
    if (!PROJECTIONS.includes(this.code)) {
      throw new Error(`projection ${this.code || ctype1} is not supported by the viewer`);
    }
    const lonType = ctype1.slice(0, 4).replace(/-/g, "");
    if (ctype2.slice(5, 8).replace(/-/g, "").toUpperCase() !== this.code) {
      throw new Error(`CTYPE1 ${ctype1} and CTYPE2 ${ctype2} differ`);
    }
    this.frame = lonType === "GLON" ? "galactic" : lonType === "ELON" ? "ecliptic" : "icrs";
    this.width = Number(keys.NAXIS1);
    this.height = Number(keys.NAXIS2);
    this.crpix = [Number(keys.CRPIX1), Number(keys.CRPIX2)];
    const crval = [Number(keys.CRVAL1 ?? 0), Number(keys.CRVAL2 ?? 0)];
    this.crval = crval;
    // Linear part: CD, or PC with CDELT (C&G 2002 sec. 2.1.2); CROTA2 as a fallback.
    if (keys.CD1_1 !== undefined) {
      this.m = [
        [Number(keys.CD1_1 ?? 0), Number(keys.CD1_2 ?? 0)],
        [Number(keys.CD2_1 ?? 0), Number(keys.CD2_2 ?? 0)],
      ];
    } else {
      const cdelt = [Number(keys.CDELT1 ?? 1), Number(keys.CDELT2 ?? 1)];
      let pc = [
        [Number(keys.PC1_1 ?? 1), Number(keys.PC1_2 ?? 0)],
        [Number(keys.PC2_1 ?? 0), Number(keys.PC2_2 ?? 1)],
      ];
      if (keys.PC1_1 === undefined && keys.CROTA2 !== undefined) {
        const c = cosd(Number(keys.CROTA2));
        const s = sind(Number(keys.CROTA2));
        const r = cdelt[1] / cdelt[0];
        pc = [
          [c, -s * r],
          [s / r, c],
        ];
      }
      this.m = [
        [cdelt[0] * pc[0][0], cdelt[0] * pc[0][1]],
        [cdelt[1] * pc[1][0], cdelt[1] * pc[1][1]],
      ];
    }
    const det = this.m[0][0] * this.m[1][1] - this.m[0][1] * this.m[1][0];
    if (!det) throw new Error("singular WCS matrix");
    this.inv = [
      [this.m[1][1] / det, -this.m[0][1] / det],
      [-this.m[1][0] / det, this.m[0][0] / det],
    ];
    const num = (k) => (keys[k] === undefined ? undefined : Number(keys[k]));
    this.pole = nativePole(this.code, crval[0], crval[1], num("LONPOLE"), num("LATPOLE"));
  }

  /** Pixel scale at the reference point [deg/pixel] (geometric mean of the two axes). */
  get scaleDeg() {
    return Math.sqrt(Math.abs(this.m[0][0] * this.m[1][1] - this.m[0][1] * this.m[1][0]));
  }

  /** 0-based pixel (x, y) -> [lon, lat] in the WCS frame [deg], or null off the sky. */
  pixToWorld(px, py) {
    const dx = px + 1 - this.crpix[0];
    const dy = py + 1 - this.crpix[1];
    const x = this.m[0][0] * dx + this.m[0][1] * dy;
    const y = this.m[1][0] * dx + this.m[1][1] * dy;
    const native = deproject(this.code, x, y);
    if (!native) return null;
    return rotate(native[0], native[1], this.pole);
  }

  /** The picture's top-left-origin canvas position (cx, cy) [pixels] -> [lon, lat]. */
  canvasToWorld(cx, cy) {
    // Canvas pixel i spans [i, i+1): its centre is FITS pixel i (0-based); rows run top down.
    return this.pixToWorld(cx - 0.5, this.height - 0.5 - cy);
  }

  /** The picture's (lon, lat) as ICRS (ra, dec) and Galactic (l, b) [deg]. */
  canvasToSky(cx, cy) {
    const w = this.canvasToWorld(cx, cy);
    if (!w) return null;
    if (this.frame === "galactic") return { radec: galToIcrs(w[0], w[1]), lb: w };
    if (this.frame === "ecliptic") return null;
    return { radec: w, lb: icrsToGal(w[0], w[1]) };
  }
}

/** The WCS the service makes for a field (skyrender.geometry.make_geometry's rules). */
export function fieldWcs(view) {
  const scale = view.fovDeg / Math.max(view.width, view.height);
  const code = view.projection || "TAN";
  return new Wcs({
    NAXIS1: view.width,
    NAXIS2: view.height,
    CTYPE1: `RA---${code}`.slice(0, 8).padEnd(8, "-"),
    CTYPE2: `DEC--${code}`.slice(0, 8).padEnd(8, "-"),
    CRVAL1: ((view.ra % 360) + 360) % 360,
    CRVAL2: view.dec,
    CRPIX1: (view.width + 1) / 2,
    CRPIX2: (view.height + 1) / 2,
    CDELT1: -scale,
    CDELT2: scale,
  });
}

// ICRS -> Galactic rotation (Hipparcos catalogue, ESA 1997, vol. 1 sec. 1.5.3; agrees
// with astropy's Galactic frame to well under 0.1 arcsec).
const A_G = [
  [-0.0548755604162154, -0.873437090234885, -0.4838350155487132],
  [0.4941094278755837, -0.44482963013918, 0.7469822444972189],
  [-0.8676661490190047, -0.1980763734312015, 0.4559837761750669],
];

function unit(lon, lat) {
  return [cosd(lat) * cosd(lon), cosd(lat) * sind(lon), sind(lat)];
}

function lonlat(v) {
  const lon = atan2d(v[1], v[0]);
  return [((lon % 360) + 360) % 360, asind(v[2])];
}

export function icrsToGal(ra, dec) {
  const u = unit(ra, dec);
  return lonlat(A_G.map((row) => row[0] * u[0] + row[1] * u[1] + row[2] * u[2]));
}

export function galToIcrs(l, b) {
  const u = unit(l, b);
  return lonlat([0, 1, 2].map((j) => A_G[0][j] * u[0] + A_G[1][j] * u[1] + A_G[2][j] * u[2]));
}

// -- formatting and parsing coordinates ------------------------------------------------------

function sexa(value, hours, places) {
  const sign = value < 0 ? "-" : hours ? "" : "+";
  let v = Math.abs(hours ? value / 15 : value);
  const scale = 10 ** places;
  let total = Math.round(v * 3600 * scale);
  const whole = Math.floor(total / (3600 * scale));
  total -= whole * 3600 * scale;
  const min = Math.floor(total / (60 * scale));
  total -= min * 60 * scale;
  const sec = (total / scale).toFixed(places).padStart(places ? places + 3 : 2, "0");
  v = String(whole).padStart(2, "0");
  return `${sign}${v}${hours ? "h" : "°"}${String(min).padStart(2, "0")}${hours ? "m" : "'"}${sec}${hours ? "s" : '"'}`;
}

export const formatRa = (ra) => sexa(((ra % 360) + 360) % 360, true, 2);
export const formatDec = (dec) => sexa(dec, false, 1);

/**
 * Parse "RA Dec": decimal degrees ("83.82 -5.39"), or sexagesimal with the RA in hours
 * ("05 35 17.3 -05 23 28", "05:35:17.3 -05:23:28", "5h35m17.3s -5d23m28s").
 * Returns [ra, dec] in degrees or throws an Error saying what is wrong.
 */
export function parseRaDec(text) {
  const s = String(text).trim().replace(/,/g, " ").replace(/[hdm°'′″"s:]/gi, " ").replace(/\s+/g, " ").trim();
  if (!s) throw new Error("type a position: RA Dec in degrees or sexagesimal");
  const tokens = s.split(" ");
  const nums = tokens.map(Number);
  if (nums.some((n) => !Number.isFinite(n))) {
    throw new Error(`cannot read "${text}": expected numbers (RA Dec in degrees, or h m s ±d m s)`);
  }
  let ra;
  let dec;
  if (nums.length === 2) {
    [ra, dec] = nums;
  } else if (nums.length === 6 || nums.length === 4) {
    const half = nums.length / 2;
    const raParts = nums.slice(0, half);
    const decParts = nums.slice(half);
    const negative = tokens[half].startsWith("-");
    const toDeg = (parts) => parts.reduce((acc, p, i) => acc + Math.abs(p) / 60 ** i, 0);
    ra = toDeg(raParts) * 15;
    dec = toDeg(decParts) * (negative ? -1 : 1);
    if (raParts[0] >= 24 || raParts.slice(1).some((p) => p < 0 || p >= 60)) {
      throw new Error(`RA "${raParts.join(" ")}" is not hours minutes seconds`);
    }
    if (decParts.slice(1).some((p) => p < 0 || p >= 60)) {
      throw new Error(`Dec "${decParts.join(" ")}" is not degrees minutes seconds`);
    }
  } else {
    throw new Error(`cannot read "${text}": give RA and Dec (2 numbers in degrees, or 6 sexagesimal)`);
  }
  if (ra < 0 || ra >= 360) throw new Error(`RA ${ra} is outside 0..360 degrees`);
  if (dec < -90 || dec > 90) throw new Error(`Dec ${dec} is outside -90..+90 degrees`);
  return [ra, dec];
}
